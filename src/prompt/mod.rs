//! Turning chat messages into the tokens a model sees, outside the engine's
//! loop and outside the HTTP workers: prompts can be large, and tokenizing one
//! must never hold up another tenant's request or the server's event loop.
//!
//! - [`size`]: how many bytes a token can cover at most, so an oversized
//!   prompt is refused by its length in bytes before anything tokenizes it.
//! - [`blocking`]: a bounded pool for CPU-heavy prompt work.

pub mod blocking;
pub mod chat;
pub mod detokenize;
pub mod gguf;
pub mod size;
pub mod template;
pub mod token_bytes;

pub use blocking::run_blocking;
pub use size::{PromptSize, max_token_bytes};
