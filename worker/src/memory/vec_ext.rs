//! Registers the sqlite-vec extension (`vec0`, `vec_distance_cosine`) for every SQLite connection this process opens.

use std::sync::Once;

static REGISTER: Once = Once::new();

/// Makes sqlite-vec available to connections opened after this call; idempotent and thread-safe.
pub(crate) fn register() {
    REGISTER.call_once(register_auto_extension);
}

#[allow(unsafe_code)]
fn register_auto_extension() {
    // SAFETY: `sqlite3_vec_init` is sqlite-vec's C entry point with the standard extension signature
    // `int(sqlite3*, char**, const sqlite3_api_routines*)`; the crate declares it as `fn()` only to avoid
    // depending on SQLite's types, so transmuting the function pointer to the signature SQLite expects is
    // exact. `sqlite3_auto_extension` only stores the pointer (the static library lives for the whole
    // process) and is itself thread-safe; `Once` guarantees a single registration.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_auto_extension(Some(std::mem::transmute::<
            *const (),
            unsafe extern "C" fn(
                *mut rusqlite::ffi::sqlite3,
                *mut *mut std::os::raw::c_char,
                *const rusqlite::ffi::sqlite3_api_routines,
            ) -> std::os::raw::c_int,
        >(
            sqlite_vec::sqlite3_vec_init as *const ()
        )))
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::error!(
            rc,
            "registering sqlite-vec failed; vector search will be unavailable"
        );
    }
}
