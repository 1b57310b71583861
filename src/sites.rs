//! Failure domains of the witness membership: which voter sets survive the loss of a site.
//!
//! A witness's site is its failure domain (a region, or the third site). The arbiter exists
//! to decide when a region is lost, so the voters must survive that loss: after losing any
//! one site, the rest must still be a quorum. Two layouts break that, in increasing order:
//!
//! - a site whose loss leaves the rest short of a quorum ([`SiteRisk::SiteLossStops`]): the
//!   arbiter stops exactly when it is needed (a 4-voter layout with two at one site, or two
//!   sites of one voter each);
//! - a site that holds a quorum by itself ([`SiteRisk::SiteMajority`]): that site decides
//!   alone, cut off from the others it still commits, and its loss stops the rest.
//!
//! A membership change is refused when it makes the layout worse than it is, unless the
//! operator accepts the risk with a reason (which the audit log keeps). A change that keeps
//! or improves the layout is allowed, so a cluster that is already at risk can be repaired
//! one step at a time. Pure: no I/O.

use std::collections::BTreeMap;

/// How far a voter set is from surviving the loss of any one site, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SiteRisk {
    /// Losing any one site leaves a quorum.
    Tolerant,
    /// Losing some site leaves the rest short of a quorum.
    SiteLossStops,
    /// Some site holds a quorum by itself.
    SiteMajority,
}

/// What a voter set's layout is, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteLayout {
    pub risk: SiteRisk,
    /// One sentence naming the site and the numbers behind `risk` (empty when tolerant).
    pub reason: String,
}

/// The layout of `voters`, each given by its site.
pub fn layout<'a>(voters: impl IntoIterator<Item = &'a str>) -> SiteLayout {
    let mut per_site: BTreeMap<&str, usize> = BTreeMap::new();
    for site in voters {
        *per_site.entry(site).or_default() += 1;
    }
    let total: usize = per_site.values().sum();
    let quorum = total / 2 + 1;
    // The site with the most voters is the worst one to lose (ties: the first by name).
    let Some((site, most)) =
        per_site
            .iter()
            .map(|(s, n)| (*s, *n))
            .fold(None, |best: Option<(&str, usize)>, (s, n)| match best {
                Some((_, m)) if m >= n => best,
                _ => Some((s, n)),
            })
    else {
        return SiteLayout {
            risk: SiteRisk::SiteLossStops,
            reason: "there are no voters".into(),
        };
    };
    let voters = |n: usize| {
        if n == 1 {
            "1 voter".to_string()
        } else {
            format!("{n} voters")
        }
    };
    if most >= quorum {
        SiteLayout {
            risk: SiteRisk::SiteMajority,
            reason: format!(
                "site {site} holds {} of {total}, a quorum by itself: it decides alone, and \
                 losing it stops the cluster",
                voters(most)
            ),
        }
    } else if total - most < quorum {
        SiteLayout {
            risk: SiteRisk::SiteLossStops,
            reason: format!(
                "losing site {site} ({}) leaves {} of {total}, short of the quorum of {quorum}",
                voters(most),
                voters(total - most)
            ),
        }
    } else {
        SiteLayout {
            risk: SiteRisk::Tolerant,
            reason: String::new(),
        }
    }
}

/// Checks a change of the voters from `before` to `after`: `Err` with the reason when the
/// change makes the layout worse, `Ok` with the layout after it otherwise.
pub fn check_change<'a>(
    before: impl IntoIterator<Item = &'a str>,
    after: impl IntoIterator<Item = &'a str>,
) -> Result<SiteLayout, String> {
    let (before, after) = (layout(before), layout(after));
    if after.risk > before.risk {
        Err(after.reason)
    } else {
        Ok(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn risk(sites: &[&str]) -> SiteRisk {
        layout(sites.iter().copied()).risk
    }

    /// Goal: the layouts of the deployments we document are classified as the operator
    /// would reason about them.
    #[test]
    fn layouts_are_classified_by_the_worst_site_loss() {
        use SiteRisk::*;
        assert_eq!(risk(&["a", "b", "t"]), Tolerant);
        assert_eq!(risk(&["a", "a", "b", "b", "t"]), Tolerant);
        assert_eq!(risk(&["a", "b", "t", "a", "b"]), Tolerant);
        // Four voters, two at one site: losing it leaves 2 of 4.
        assert_eq!(risk(&["a", "b", "t", "t"]), SiteLossStops);
        assert_eq!(risk(&["a", "b"]), SiteLossStops);
        assert_eq!(risk(&["a", "a", "b", "b"]), SiteLossStops);
        // One site with a quorum of its own.
        assert_eq!(risk(&["a", "a", "b"]), SiteMajority);
        assert_eq!(risk(&["a", "a", "a", "b", "t"]), SiteMajority);
        assert_eq!(risk(&["local"]), SiteMajority);
        assert_eq!(risk(&[]), SiteLossStops);
        let why = layout(["a", "b", "t", "t"]).reason;
        assert!(
            why.contains("losing site t (2 voters) leaves 2 voters of 4"),
            "{why}"
        );
        assert!(why.contains("quorum of 3"), "{why}");
        let why = layout(["a", "a", "b"]).reason;
        assert!(why.contains("site a holds 2 voters of 3"), "{why}");
    }

    /// Goal: a change is refused only when it makes the layout worse, so a cluster already
    /// at risk can still be repaired one witness at a time.
    #[test]
    fn only_changes_that_worsen_the_layout_are_refused() {
        // Adding a fourth voter to three sites, or removing one of three: refused.
        let why = check_change(["a", "b", "t"], ["a", "b", "t", "t"]).unwrap_err();
        assert!(why.contains("losing site t"), "{why}");
        assert!(check_change(["a", "b", "t"], ["a", "b"]).is_err());
        // Removing the tiebreaker of a two-by-two-plus-one layout: refused.
        let why = check_change(["a", "a", "b", "b", "t"], ["a", "a", "b", "b"]).unwrap_err();
        assert!(
            why.contains("losing site a (2 voters) leaves 2 voters of 4"),
            "{why}"
        );
        // A sixth voter at a region that already has two: losing it would leave 3 of 6.
        let why = check_change(["a", "a", "b", "b", "t"], ["a", "a", "a", "b", "b", "t"]);
        assert!(why.is_err(), "{why:?}");
        let why = check_change(["a", "a", "b", "t"], ["a", "a", "a", "b", "t"]).unwrap_err();
        assert!(why.contains("site a holds 3 voters of 5"), "{why}");
        // Repairs and neutral changes: allowed.
        assert_eq!(
            check_change(["a", "b", "t", "t"], ["a", "b", "t"])
                .unwrap()
                .risk,
            SiteRisk::Tolerant
        );
        assert!(check_change(["a", "b", "t", "t"], ["a", "b", "t", "t", "b"]).is_ok());
        // Growing from three to five goes through four: the step to four needs the risk
        // accepted, the step to five repairs it.
        assert!(check_change(["a", "b", "t"], ["a", "b", "t", "a"]).is_err());
        assert!(check_change(["a", "b", "t", "a"], ["a", "b", "t", "a", "b"]).is_ok());
        assert!(check_change(["local"], ["local", "local"]).is_ok());
        assert!(check_change(["a", "a", "b"], ["a", "a", "b", "b"]).is_ok());
    }
}
