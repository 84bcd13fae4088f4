//! The Scalar page at `/openapi` in a real browser: headless Chromium loads the page, runs
//! Scalar's JavaScript (served from the pinned npm package `@scalar/api-reference`, so no
//! internet is needed), which fetches `openapi/json` and renders the operations. The test
//! reads the rendered DOM, so it fails if the page, the script route or the relative
//! document URL break.
//!
//! Needs `/usr/bin/chromium` (Debian's `chromium` package; `.ci/run` installs it). Without
//! it the test is skipped, unless `EPICENTER_CI` is set, where it fails. Needs `npm` when
//! `tests/js/node_modules` is missing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use epicenter_server::server::{create_server, ServerOptions};
use epicenter_server::workspace::{id, text, WorkspaceDefinition};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Upper bound for one Chromium run; a normal run takes a few seconds.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Scalar's browser bundle, from the version pinned in `tests/js/package-lock.json`.
fn scalar_js() -> PathBuf {
    js_dir().join("node_modules/@scalar/api-reference/dist/browser/standalone.js")
}

/// Runs `npm ci` in `tests/js` unless the Scalar bundle is already installed.
fn ensure_scalar_js() -> PathBuf {
    let path = scalar_js();
    if path.is_file() {
        return path;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(js_dir())
        .output()
        .unwrap_or_else(|e| panic!("the browser test needs `npm` on PATH: {e}"));
    assert!(
        out.status.success(),
        "`npm ci` in {} failed ({}):\n{}",
        js_dir().display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        path.is_file(),
        "`npm ci` did not install {}",
        path.display()
    );
    path
}

/// Loads `url` in headless Chromium and returns the DOM after the page's scripts ran.
/// `--virtual-time-budget` lets the page settle (script, fetch, render) before the dump;
/// the budget is virtual time, so an idle page finishes early.
async fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("a profile directory");
    let stderr_path = profile.path().join("chromium.stderr");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            "--disable-quic",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_path).expect("a stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {CHROMIUM}: {e}"));

    // Read stdout on a plain thread: if Chromium hangs, the test gives up on the thread
    // instead of waiting for it.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut dom = Vec::new();
        let read = std::io::Read::read_to_end(&mut stdout, &mut dom).map(|_| dom);
        let _ = tx.send(read);
    });

    let read = tokio::time::timeout(BROWSER_TIMEOUT, rx).await;
    if read.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().expect("waiting for Chromium");
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let dom = match read {
        Err(_) => panic!("Chromium did not finish within {BROWSER_TIMEOUT:?}; stderr:\n{stderr}"),
        Ok(read) => read
            .expect("the stdout reader stopped")
            .expect("reading Chromium's stdout"),
    };
    assert!(
        status.success(),
        "Chromium failed ({status}); stderr:\n{stderr}"
    );
    String::from_utf8(dom).expect("Chromium printed non-UTF-8")
}

#[tokio::test]
async fn scalar_page_renders_the_generated_operations() {
    if !Path::new(CHROMIUM).is_file() {
        if std::env::var_os("EPICENTER_CI").is_some() {
            panic!("{CHROMIUM} is missing, and EPICENTER_CI is set: the browser test must run");
        }
        eprintln!(
            "SKIPPED scalar_page_renders_the_generated_operations: {CHROMIUM} not found \
             (install Debian's `chromium` package to run it)"
        );
        return;
    }
    let scalar_js = ensure_scalar_js();

    let blog = WorkspaceDefinition::builder("blog")
        .table("posts", [("id", id()), ("title", text())])
        .build()
        .expect("a valid definition");
    let client = blog.in_memory().create().await.expect("a client");
    let server = create_server(
        [client],
        ServerOptions::default().port(0).scalar_js_file(scalar_js),
    )
    .expect("a server");
    let addr = server.start().await.expect("the server starts");

    // `#tag/blog` opens the `blog` tag: without it Scalar renders the tag collapsed, as a
    // bare list of paths, and leaves out the operations' sections.
    let started = Instant::now();
    let dom = dump_dom(&format!("http://{addr}/openapi#tag/blog")).await;
    eprintln!("Chromium rendered the page in {:?}", started.elapsed());
    server.destroy().await.expect("the server stops");

    // The served HTML has none of this: the headings are the operations' summaries from
    // `openapi/json`, rendered by Scalar, so they prove the script ran, fetched the
    // document from the relative URL and rendered every operation of `posts`.
    let expected = [
        ">List `posts`</h3>",
        ">Create or overwrite a row of `posts`</h3>",
        ">Get a row of `posts`</h3>",
        ">Update a row of `posts`</h3>",
        ">Delete a row of `posts`</h3>",
        "/workspaces/blog/tables/posts/{id}",
    ];
    let missing: Vec<&str> = expected.into_iter().filter(|s| !dom.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "the rendered page lacks {missing:?}; DOM ({} bytes):\n{}",
        dom.len(),
        dom.chars().take(4000).collect::<String>()
    );
}
