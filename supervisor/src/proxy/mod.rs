//! Edge reverse proxy routing member traffic by binding (to be written).
