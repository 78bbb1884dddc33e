//! Which model a request's `model` names. The scheme: the base model's
//! served name; an adapter's name (`support-bot`), scoped to the caller's
//! tenant; or `<base>::<adapter>` (the explicit form, as mistral.rs writes
//! it). A tenant with a `default_adapter` gets it when asking for the base.
//! An adapter an admin marked shared is reachable by every tenant as
//! `<owner>/<adapter>`.

use std::sync::Arc;

use crate::adapters::{AdapterLease, AdapterRecord, valid_name};
use crate::app::AppState;
use crate::auth::Tenant;
use crate::config::valid_tenant_id;
use crate::engine::{Engine, ModelCard};
use crate::error::ApiError;

#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Base,
    Adapter(&'a str),
    Shared { owner: &'a str, name: &'a str },
}

/// Parses a requested model name; `None` when it cannot name anything here.
pub fn parse_target<'a>(
    base: &str,
    requested: &'a str,
    default_adapter: Option<&'a str>,
) -> Option<Target<'a>> {
    if requested == base {
        return Some(default_adapter.map_or(Target::Base, Target::Adapter));
    }
    let adapter = match requested.split_once("::") {
        Some((named_base, adapter)) if named_base == base => adapter,
        Some(_) => return None,
        None => requested,
    };
    match adapter.split_once('/') {
        Some((owner, name)) if valid_tenant_id(owner) && valid_name(name) => {
            Some(Target::Shared { owner, name })
        }
        Some(_) => None,
        None if valid_name(adapter) => Some(Target::Adapter(adapter)),
        None => None,
    }
}

/// The adapter a request names, without loading it.
pub fn adapter_record(
    state: &AppState,
    tenant: &Tenant,
    requested: &str,
) -> Result<Option<AdapterRecord>, ApiError> {
    let not_found = || ApiError::ModelNotFound(requested.to_string());
    if !tenant.models.allows(&state.base_model) {
        return Err(not_found());
    }
    match parse_target(
        &state.base_model,
        requested,
        tenant.default_adapter.as_deref(),
    )
    .ok_or_else(not_found)?
    {
        Target::Base => Ok(None),
        Target::Adapter(name) => state
            .store
            .current(&tenant.id, name)
            .map(Some)
            .ok_or_else(not_found),
        Target::Shared { owner, name } => state
            .store
            .current(owner, name)
            .filter(|record| record.shared || record.tenant == tenant.id)
            .map(Some)
            .ok_or_else(not_found),
    }
}

/// A request's model, resolved without loading anything: what the request
/// can be checked, limited and admitted against.
pub struct Resolved {
    /// The base model's card: an adapter shares its context and vocabulary.
    pub card: ModelCard,
    pub adapter: Option<AdapterRecord>,
    /// Bounded metric label: the base name or the adapter's name.
    pub label: String,
    /// The requesting tenant (an adapter it does not own must stay shared).
    tenant: String,
}

pub fn resolve(
    state: &AppState,
    engine: &Arc<dyn Engine>,
    tenant: &Tenant,
    requested: &str,
) -> Result<Resolved, ApiError> {
    let adapter = adapter_record(state, tenant, requested)?;
    let card = engine
        .model(&state.base_model)
        .ok_or_else(|| ApiError::ModelNotFound(requested.to_string()))?;
    let label = match &adapter {
        None => state.base_model.clone(),
        Some(record) if record.tenant == tenant.id => record.name.clone(),
        Some(record) => format!("{}/{}", record.tenant, record.name),
    };
    Ok(Resolved {
        card,
        adapter,
        label,
        tenant: tenant.id.clone(),
    })
}

/// A resolved model made ready to generate with: the engine's model id and,
/// for an adapter, the lease that keeps it loaded until the request ends.
pub struct Routed {
    pub engine_model: String,
    pub lease: Option<AdapterLease>,
}

impl Resolved {
    /// Loads the adapter if needed. Only admitted requests get here: a
    /// refused request must never load (and evict) anything.
    pub async fn load(
        &self,
        state: &AppState,
        engine: &Arc<dyn Engine>,
    ) -> Result<Routed, ApiError> {
        let Some(record) = &self.adapter else {
            return Ok(Routed {
                engine_model: self.card.id.clone(),
                lease: None,
            });
        };
        // A rollback or delete while this request waited (for its limits,
        // its prompt's measuring, admission) discards the generation it
        // resolved, files and all. What the name serves now serves it.
        let current = |record: &AdapterRecord| {
            state
                .store
                .current(&record.tenant, &record.name)
                .filter(|now| now.shared || now.tenant == self.tenant)
        };
        let mut record =
            current(record).ok_or_else(|| ApiError::ModelNotFound(self.label.clone()))?;
        let mut retried = false;
        let lease = loop {
            match state.residency.acquire(engine.clone(), &record).await {
                Ok(lease) => break lease,
                // The same, between the check above and the load's reading
                // of the files: once.
                Err(error) if !retried => match current(&record) {
                    Some(now) if now.generation != record.generation => {
                        record = now;
                        retried = true;
                    }
                    Some(_) => return Err(error.into()),
                    None => return Err(ApiError::ModelNotFound(self.label.clone())),
                },
                Err(error) => return Err(error.into()),
            }
        };
        if engine.model(&lease.engine_id).is_none() {
            return Err(ApiError::engine(format!(
                "adapter {} vanished after loading",
                lease.engine_id
            )));
        }
        Ok(Routed {
            engine_model: lease.engine_id.clone(),
            lease: Some(lease),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_by_the_documented_scheme() {
        assert_eq!(parse_target("base", "base", None), Some(Target::Base));
        assert_eq!(
            parse_target("base", "base", Some("bot")),
            Some(Target::Adapter("bot"))
        );
        assert_eq!(
            parse_target("base", "bot", None),
            Some(Target::Adapter("bot"))
        );
        assert_eq!(
            parse_target("base", "base::bot", None),
            Some(Target::Adapter("bot"))
        );
        assert_eq!(parse_target("base", "other::bot", None), None);
        assert_eq!(parse_target("base", "base::../x", None), None);
        assert_eq!(parse_target("base", "Not A Name", None), None);
        assert_eq!(
            parse_target("base", "acme/bot", None),
            Some(Target::Shared {
                owner: "acme",
                name: "bot"
            })
        );
        assert_eq!(
            parse_target("base", "base::acme/bot", None),
            Some(Target::Shared {
                owner: "acme",
                name: "bot"
            })
        );
        assert_eq!(parse_target("base", "../bot", None), None);
        assert_eq!(parse_target("base", "acme/b/c", None), None);
    }
}
