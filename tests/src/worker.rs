//! Harness for the real `wirebot-worker` and a protocol v3 WebSocket client (to be written).
