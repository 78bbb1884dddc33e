//! OpenAI-compatible routes and their wire types.

pub mod accounting;
pub mod admin;
pub mod admin_adapters;
pub mod chat;
pub mod completion;
pub mod delivery;
pub mod disconnect;
pub mod extract;
pub mod health;
pub mod models;
pub mod openapi;
pub mod responses;
pub mod routes;
pub mod routing;
pub mod serve;
pub mod sse;
pub mod tools;
pub mod validate;
pub mod wire;
