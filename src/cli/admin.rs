//! `policy apply`/`show` and `members list`/`add`/`remove`: changes to what the cluster is
//! configured with, each validated by the leader before it is proposed.

use super::args::{MembersCmd, PolicyCmd};
use super::{output, Failure};
use crate::proto;

pub(super) async fn policy(cmd: PolicyCmd) -> Result<(), Failure> {
    match cmd {
        PolicyCmd::Apply {
            conn,
            file,
            dry_run,
            if_version,
        } => {
            let toml = std::fs::read_to_string(&file)
                .map_err(|e| Failure::usage(format!("{}: cannot read: {e}", file.display())))?;
            // Validate locally first for a precise message; the leader validates again.
            crate::config::Policy::parse(&file.display().to_string(), &toml)
                .map_err(|e| Failure::usage(format!("invalid policy: {e}")))?;
            let client = conn.client()?;
            let reply = client
                .policy_apply(proto::PolicyApplyRequest {
                    toml,
                    dry_run,
                    if_version,
                    request_id: crate::api::new_request_id(),
                })
                .await?;
            if reply.diff.is_empty() {
                println!("no changes");
            } else {
                print!("{}", reply.diff);
            }
            if reply.applied {
                println!("policy version {} committed", reply.version);
            } else {
                println!(
                    "dry run: nothing committed (current version {})",
                    reply.version
                );
            }
            Ok(())
        }
        PolicyCmd::Show(conn) => {
            let client = conn.client()?;
            let reply = client.policy_show().await?;
            println!("# policy version {}", reply.version);
            print!("{}", reply.toml);
            Ok(())
        }
    }
}

pub(super) async fn members(cmd: MembersCmd) -> Result<(), Failure> {
    let reply = match cmd {
        MembersCmd::List(conn) => conn.client()?.members_list().await?,
        MembersCmd::Add {
            conn,
            id,
            addr,
            site,
            accept_site_risk,
        } => {
            conn.client()?
                .members_add(proto::MembersAddRequest {
                    id,
                    addr,
                    site,
                    accept_site_risk: accept_site_risk.unwrap_or_default(),
                })
                .await?
        }
        MembersCmd::Remove {
            conn,
            id,
            accept_site_risk,
        } => {
            conn.client()?
                .members_remove(proto::MembersRemoveRequest {
                    id,
                    accept_site_risk: accept_site_risk.unwrap_or_default(),
                })
                .await?
        }
    };
    print!("{}", output::witness_table(&reply.witnesses));
    Ok(())
}
