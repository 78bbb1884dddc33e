//! CPU-heavy prompt work (template rendering, tokenization) runs on tokio's
//! blocking threads, at most one job per core at a time: HTTP workers stay
//! free to answer, and a burst of large prompts queues here instead of
//! spawning a thread each.

use std::sync::OnceLock;

use tokio::sync::Semaphore;

fn permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Semaphore::new(cores)
    })
}

#[derive(Debug, thiserror::Error)]
#[error("prompt worker failed: {0}")]
pub struct BlockingError(String);

/// Runs `job` on a blocking thread once a permit is free. Dropping the future
/// before the job starts frees its place; a started job runs to the end.
pub async fn run_blocking<T, F>(job: F) -> Result<T, BlockingError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let _permit = permits()
        .acquire()
        .await
        .map_err(|e| BlockingError(e.to_string()))?;
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| BlockingError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_the_job_and_returns_its_value() {
        let value = run_blocking(|| 6 * 7).await.expect("job ran");
        assert_eq!(value, 42);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_not_a_crash() {
        let result = run_blocking(|| -> u8 { panic!("boom") }).await;
        assert!(result.is_err());
    }
}
