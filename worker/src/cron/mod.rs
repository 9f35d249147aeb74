//! Cron engine: jobs.json store, schedules, runner (to be written).
