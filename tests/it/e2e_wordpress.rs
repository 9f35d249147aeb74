//! End-to-end: real WordPress drives the real daemon through signed webhooks.
