//! Policy fixtures of the integration tests and the fence bench, in one place: [`POLICY`],
//! which most tests start from; [`CHECKOUT`], its manual group, for the tests that write
//! their own regions or DNS tables; and [`checkout_only`] for the tests that need that group
//! with other candidates or another lease. A test's own variations (a hook table appended, a
//! lease or a mode replaced) stay in the test, next to the assertions they serve.
//!
//! Plain text and `std` only: the bench includes the harness by path.

/// The three regions of the fixtures, without probes: no health verdict ever moves a group
/// (the tests that need verdicts write regions of their own, with probes). A literal, for
/// `concat!`.
macro_rules! regions {
    () => {
        r#"
[[regions]]
name = "region-a"
[[regions]]
name = "region-b"
[[regions]]
name = "region-c"
"#
    };
}

/// The text of [`CHECKOUT`], as a literal for `concat!`.
macro_rules! checkout {
    () => {
        r#"
[[groups]]
name = "checkout"
candidates = ["region-a", "region-b"]
mode = "manual"
lease_ms = 1000
lease_margin_ms = 200
"#
    };
}

/// `checkout`, manual over region-a then region-b with a 1 s lease (a failover's lease wait
/// stays short): the group of most tests. It ends inside the group's table, so a test
/// appends keys of its own (`step_attempts`, `hooks`, `[groups.dns]`) right after it.
pub const CHECKOUT: &str = checkout!();

/// The candidates of `checkout` in [`POLICY`], as a TOML list.
pub const AB: &str = r#"["region-a", "region-b"]"#;

/// Three regions; [`CHECKOUT`], and `catalog` automatic over region-b then region-a with
/// the same lease.
pub const POLICY: &str = concat!(
    regions!(),
    checkout!(),
    r#"
[[groups]]
name = "catalog"
candidates = ["region-b", "region-a"]
mode = "auto"
lease_ms = 1000
lease_margin_ms = 200
"#
);

/// The regions of [`POLICY`] with only a manual `checkout` group over `candidates` (a TOML
/// list), whose table ends with `keys` (TOML lines; empty: every default, such as the
/// production lease).
pub fn checkout_only(candidates: &str, keys: &str) -> String {
    format!(
        concat!(
            regions!(),
            "\n[[groups]]\nname = \"checkout\"\ncandidates = {candidates}\nmode = \"manual\"\n{keys}"
        ),
        candidates = candidates,
        keys = keys
    )
}
