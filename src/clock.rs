//! Wall-clock time as the API and the stores write it: whole seconds since
//! the Unix epoch (OpenAI's `created`, adapter records, usage buckets, JWTs).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch; 0 on a clock set before 1970 rather than a panic.
pub fn unix_now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
