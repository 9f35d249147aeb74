//! Harness for the real `wirebot` daemon and CLI (to be written).
