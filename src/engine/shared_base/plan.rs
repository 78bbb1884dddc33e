//! Which rows go into the next step. Every decoding sequence gets its one
//! row; what is left of the step's token budget goes to prompt chunks,
//! shared equally by the tenants with prompts waiting (a share one tenant
//! cannot use goes to the others), each tenant's prompts in arrival order.
//! So one tenant's long prompt cannot hold another tenant's prompt back for
//! whole steps: both advance in the same step.

use std::collections::HashMap;

/// A running sequence as the plan sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub tenant: &'a str,
    /// Tokens to go through the model before the next sample (1: decoding).
    pub pending: usize,
    /// Rows of one adapter are kept contiguous; any key naming it.
    pub adapter: Option<usize>,
}

/// `(candidate index, rows)` for this step, ordered by adapter.
pub fn plan(candidates: &[Candidate<'_>], max_tokens: usize) -> Vec<(usize, usize)> {
    let mut chosen = Vec::new();
    let mut budget = max_tokens.max(1);
    for (index, candidate) in candidates.iter().enumerate() {
        if candidate.pending == 1 && budget > 0 {
            chosen.push((index, 1));
            budget -= 1;
        }
    }
    let grants = prompt_grants(candidates, budget);
    let mut left: HashMap<&str, usize> = grants.into_iter().collect();
    for (index, candidate) in candidates.iter().enumerate() {
        if candidate.pending <= 1 {
            continue;
        }
        let Some(grant) = left.get_mut(candidate.tenant) else {
            continue;
        };
        let rows = candidate.pending.min(*grant);
        if rows > 0 {
            chosen.push((index, rows));
            *grant -= rows;
        }
    }
    chosen.sort_by_key(|&(index, _)| (candidates[index].adapter, index));
    chosen
}

/// Prompt rows per tenant: equal shares of `budget` by water-filling (a
/// tenant wanting less than its share gets what it wants, the rest is shared
/// again); rows that do not divide go to the tenants that arrived first.
fn prompt_grants<'a>(candidates: &[Candidate<'a>], budget: usize) -> Vec<(&'a str, usize)> {
    // Tenants in order of their first waiting prompt, with what they want.
    let mut wanted: Vec<(&str, usize)> = Vec::new();
    for candidate in candidates.iter().filter(|c| c.pending > 1) {
        match wanted
            .iter_mut()
            .find(|(tenant, _)| *tenant == candidate.tenant)
        {
            Some((_, rows)) => *rows += candidate.pending,
            None => wanted.push((candidate.tenant, candidate.pending)),
        }
    }
    let mut grants: Vec<(&str, usize)> = wanted.iter().map(|(t, _)| (*t, 0)).collect();
    let mut budget = budget;
    let mut open: Vec<usize> = (0..wanted.len()).collect();
    while !open.is_empty() && budget > 0 {
        let share = budget / open.len();
        let satisfied: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| wanted[i].1 - grants[i].1 <= share)
            .collect();
        if satisfied.is_empty() {
            // Everyone wants more than the share: equal parts, the
            // remainder one row each to the earliest.
            let extra = budget - share * open.len();
            for (rank, &i) in open.iter().enumerate() {
                grants[i].1 += share + usize::from(rank < extra);
            }
            break;
        }
        for i in satisfied {
            let rows = wanted[i].1 - grants[i].1;
            grants[i].1 += rows;
            budget -= rows;
            open.retain(|&j| j != i);
        }
    }
    grants
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(tenant: &str, pending: usize) -> Candidate<'_> {
        Candidate {
            tenant,
            pending,
            adapter: None,
        }
    }

    fn rows_of(plan: &[(usize, usize)], index: usize) -> usize {
        plan.iter()
            .find(|(i, _)| *i == index)
            .map_or(0, |(_, rows)| *rows)
    }

    #[test]
    fn a_long_prompt_first_in_line_does_not_hold_back_another_tenants_prompt() {
        let running = [
            candidate("attacker", 4000),
            candidate("victim", 25),
            candidate("attacker", 1),
        ];
        let plan = plan(&running, 256);
        assert_eq!(rows_of(&plan, 2), 1, "decoding rows come first");
        assert_eq!(rows_of(&plan, 1), 25, "the short prompt goes whole");
        assert_eq!(rows_of(&plan, 0), 230, "the rest of the budget");
    }

    #[test]
    fn tenants_wanting_more_than_their_share_split_the_budget_equally() {
        let running = [
            candidate("a", 500),
            candidate("a", 500),
            candidate("b", 500),
            candidate("c", 90),
        ];
        let plan = plan(&running, 301);
        assert_eq!(rows_of(&plan, 3), 90, "c wants less than a third");
        // 211 left for a and b: 106 to a (first to arrive), 105 to b.
        assert_eq!(rows_of(&plan, 0), 106, "a's grant goes to its first prompt");
        assert_eq!(rows_of(&plan, 1), 0);
        assert_eq!(rows_of(&plan, 2), 105);
    }

    #[test]
    fn one_tenant_alone_uses_the_whole_budget_in_arrival_order() {
        let running = [candidate("a", 100), candidate("a", 300), candidate("a", 1)];
        let plan = plan(&running, 256);
        assert_eq!(rows_of(&plan, 2), 1);
        assert_eq!(rows_of(&plan, 0), 100);
        assert_eq!(rows_of(&plan, 1), 155);
    }

    #[test]
    fn rows_are_grouped_by_adapter() {
        let with = |pending, adapter| Candidate {
            tenant: "t",
            pending,
            adapter,
        };
        let running = [
            with(1, Some(2)),
            with(1, None),
            with(1, Some(1)),
            with(1, Some(2)),
        ];
        let order: Vec<usize> = plan(&running, 16).iter().map(|(i, _)| *i).collect();
        assert_eq!(order, vec![1, 2, 0, 3]);
    }
}
