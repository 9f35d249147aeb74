//! End-to-end: provisioning installs the Wirebot skills and the member's default cron jobs; Clawdbot's CLI lists them.
