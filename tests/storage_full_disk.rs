//! A real full file system under the SQLite storage: a small tmpfs mounted by the test
//! (so it needs root, as CI runs; skipped with a message otherwise), filled until commits
//! fail, then given space back. Writes must heal without a restart, and nothing answered
//! 2xx, or applied and answered 503, may be lost.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use epicenter_server::server::{create_server, ServerOptions};
use epicenter_server::storage::{SqliteOptions, SqliteStorage};
use epicenter_server::workspace::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const GUARD: Duration = Duration::from_secs(30);

/// A tmpfs mounted on a temporary directory, unmounted when dropped (a failing test too).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it), or says why it cannot.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(self.dir.path()).status();
        if !status.is_ok_and(|s| s.success()) {
            // Still busy (a test that failed while files were open): detach it.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

fn blog() -> WorkspaceDefinition {
    WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .expect("valid definition")
}

async fn post(http: &reqwest::Client, base: &str, id: &str) -> (StatusCode, Option<String>, Value) {
    let response = http
        .post(format!("{base}/workspaces/blog/tables/posts"))
        .json(&json!({"id": id, "title": "x".repeat(16 << 10)}))
        .send()
        .await
        .expect("answered");
    let status = response.status();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, response.json().await.expect("a JSON body"))
}

async fn get_status(http: &reqwest::Client, base: &str, id: &str) -> StatusCode {
    http.get(format!("{base}/workspaces/blog/tables/posts/{id}"))
        .send()
        .await
        .expect("answered")
        .status()
}

#[tokio::test]
async fn a_full_disk_heals_without_a_restart_and_loses_nothing_applied() {
    let fs = match Tmpfs::mount("3m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_heals_without_a_restart: cannot mount a tmpfs ({why}); run as root");
            return;
        }
    };
    let data: PathBuf = fs.path().join("data");
    // Space to give back later.
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 1 << 20]).unwrap();
    let options = SqliteOptions {
        max_pending_bytes: 64 << 10,
        ..SqliteOptions::default()
    };
    let storage = SqliteStorage::with_options(&data, options);
    let client = blog().with_storage(storage).create().await.unwrap();
    let server = create_server(
        [client.clone()],
        ServerOptions::default()
            .port(0)
            .write_durability_timeout(Duration::from_millis(200)),
    )
    .unwrap();
    let base = format!("http://{}", server.start().await.unwrap());
    let http = reqwest::Client::builder().timeout(GUARD).build().unwrap();

    // Fill the disk: 2xx while it has room, then 503 (applied, stored later), then 503
    // refused before being applied once 64 KiB wait.
    let (mut acked, mut applied, mut refused) = (Vec::new(), Vec::new(), None);
    for i in 0..1000 {
        let id = format!("r{i}");
        let (status, retry, body) = post(&http, &base, &id).await;
        match (status, &body["error"]["applied"]) {
            (StatusCode::CREATED, _) => acked.push(id),
            (StatusCode::SERVICE_UNAVAILABLE, Value::Bool(was_applied)) => {
                assert_eq!(retry.as_deref(), Some("1"), "{body}");
                if *was_applied {
                    applied.push(id);
                } else {
                    refused = Some(id);
                    break;
                }
            }
            _ => panic!("{status}: {body}"),
        }
    }
    let refused = refused.expect("the disk filled up");
    assert!(
        !acked.is_empty() && !applied.is_empty(),
        "{acked:?} {applied:?}"
    );
    let retrying = client
        .storage_status()
        .retrying
        .expect("commits are failing");
    assert!(retrying.contains("full"), "{retrying}");
    // What was applied is visible; what was refused is not.
    assert_eq!(get_status(&http, &base, &applied[0]).await, StatusCode::OK);
    assert_eq!(
        get_status(&http, &base, &refused).await,
        StatusCode::NOT_FOUND
    );

    // Space comes back: everything pending commits, and writes go on.
    std::fs::remove_file(&ballast).unwrap();
    tokio::time::timeout(GUARD, client.flush())
        .await
        .expect("flush finishes")
        .expect("what waited is stored");
    assert!(client.storage_status().is_healthy());
    let (status, _, body) = post(&http, &base, &refused).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    server.destroy().await.unwrap();

    let reopened = blog()
        .with_storage(SqliteStorage::new(&data))
        .create()
        .await
        .unwrap();
    let posts = reopened.table("posts").unwrap();
    let missing: Vec<_> = acked
        .iter()
        .chain(&applied)
        .chain([&refused])
        .filter(|id| !posts.has(id))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    reopened.destroy().await.unwrap();
}
