//! (owned by the control-plane engineer; to be written)
