//! `report.html` opened in a real headless Chromium through ChromeDriver (WebDriver over
//! HTTP): the page loads from disk with no console error, its figures decode, a click on a
//! column header sorts the table, and a screenshot is taken. Without Chromium and
//! ChromeDriver the test says so and passes, unless `LONGCTX_REQUIRE_BROWSER` is set (as CI
//! sets it, after installing them).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::longctx_ok;
use serde_json::{json, Value};

mod common;

/// The first of `candidates` that exists, or the one an environment variable names.
fn program(variable: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(variable) {
        return Some(PathBuf::from(p));
    }
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// ChromeDriver, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start(path: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
        let driver = Self { child, port };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "ChromeDriver did not listen on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        driver
    }

    /// One WebDriver command; returns its `value`, failing on a WebDriver error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .unwrap();
        // ChromeDriver keeps the connection open: read the head, then `Content-Length` bytes.
        let mut reader = BufReader::new(stream);
        let mut length = None;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.trim().parse::<usize>().unwrap());
                }
            }
        }
        let length = length.unwrap_or_else(|| panic!("{method} {path}: no Content-Length"));
        let mut payload = vec![0; length];
        reader.read_exact(&mut payload).unwrap();
        let payload = String::from_utf8(payload).unwrap();
        let value: Value = serde_json::from_str(&payload)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}: {payload}"));
        assert!(
            value["value"]["error"].is_null(),
            "{method} {path}: {}",
            value["value"]
        );
        value["value"].clone()
    }
}

/// The cell texts of the table that follows the heading starting with `heading`.
const TABLE_AFTER: &str = r#"
const heading = Array.from(document.querySelectorAll("h2")).find(h => h.textContent.startsWith(arguments[0]));
let table = heading.nextElementSibling;
while (table.tagName !== "TABLE") table = table.nextElementSibling;
return table;
"#;

#[test]
fn the_html_report_renders_sorts_and_logs_no_error_in_headless_chromium() {
    longctx::assets::default_model().expect("fetching the default model");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report-html");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("spec.toml");
    std::fs::write(
        &spec,
        "methods = [\"baseline\", \"kivi-2bit\", \"snapkv-4x\"]\n[[models]]\npath = \"default\"\n\
         [needle]\nlengths = 1\nmin_words = 120\nmax_words = 120\ndepths = 3\ntrials = 1\nmax_new_tokens = 16\n",
    )
    .unwrap();
    let (db, out) = (dir.join("results.db"), dir.join("report"));
    longctx_ok(&[
        "run",
        "--spec",
        spec.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    longctx_ok(&[
        "report",
        "--db",
        db.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let page = out.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: every address in the page is inline data.
    for attribute in ["src=\"", "href=\""] {
        for (at, _) in html.match_indices(attribute) {
            let value = &html[at + attribute.len()..];
            assert!(
                value.starts_with("data:"),
                "{}",
                &value[..value.len().min(80)]
            );
        }
    }
    assert!(html.contains("<img class=\"figure\""), "no inline figure");

    let (Some(chromium), Some(chromedriver)) = (
        program(
            "LONGCTX_CHROMIUM",
            &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
        ),
        program("LONGCTX_CHROMEDRIVER", &["/usr/bin/chromedriver"]),
    ) else {
        assert!(
            std::env::var_os("LONGCTX_REQUIRE_BROWSER").is_none(),
            "LONGCTX_REQUIRE_BROWSER is set but Chromium or ChromeDriver is missing: install Debian's chromium and chromium-driver"
        );
        eprintln!("skipped the browser half: no Chromium and ChromeDriver (Debian: apt-get install chromium chromium-driver)");
        return;
    };
    let driver = Driver::start(&chromedriver);
    let profile = dir.join("chromium-profile");
    let session = driver.call(
        "POST",
        "/session",
        Some(json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1600",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}})),
    );
    let id = session["sessionId"].as_str().unwrap().to_string();
    let at = |path: &str| format!("/session/{id}{path}");
    let script = |source: &str, args: Value| {
        driver.call(
            "POST",
            &at("/execute/sync"),
            Some(json!({"script": source, "args": args})),
        )
    };
    driver.call(
        "POST",
        &at("/url"),
        Some(json!({"url": format!("file://{}", page.canonicalize().unwrap().display())})),
    );

    // Every figure decoded (an inline SVG that failed would have no width).
    let figures = script(
        "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0);",
        json!([]),
    );
    let figures = figures.as_array().unwrap();
    assert!(figures.len() >= 3, "{figures:?}");
    assert!(figures.iter().all(|f| f == &json!(true)), "{figures:?}");

    // A click on "KV bytes held" sorts the needle table by it, a second one reverses it.
    let table = script(TABLE_AFTER, json!(["Needle"]));
    let column_of = |table: &Value| {
        let header = script(
            "return Array.from(arguments[0].tHead.rows[0].cells).map(c => c.textContent.trim());",
            json!([table]),
        );
        header
            .as_array()
            .unwrap()
            .iter()
            .position(|h| h.as_str().unwrap().starts_with("KV bytes held"))
            .expect("a KV bytes column")
    };
    let column = column_of(&table);
    let read = || -> Vec<(String, f64)> {
        let rows = script(
            "return Array.from(arguments[0].tBodies[0].rows).map(r => [r.cells[1].textContent, r.cells[arguments[1]].textContent]);",
            json!([table, column]),
        );
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap().to_string(),
                    r[1].as_str().unwrap().trim().parse().unwrap(),
                )
            })
            .collect()
    };
    let before = read();
    assert_eq!(before.len(), 3, "{before:?}");
    assert_eq!(before[0].0, "baseline", "{before:?}");
    let header = script(
        "return arguments[0].tHead.rows[0].cells[arguments[1]];",
        json!([table, column]),
    );
    let element = header
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    let click = || {
        driver.call(
            "POST",
            &at(&format!("/element/{element}/click")),
            Some(json!({})),
        )
    };
    click();
    let ascending = read();
    assert!(
        ascending.windows(2).all(|w| w[0].1 <= w[1].1),
        "{ascending:?}"
    );
    assert_ne!(
        ascending[0].0, "baseline",
        "the baseline holds the most bytes"
    );
    click();
    let descending = read();
    assert!(
        descending.windows(2).all(|w| w[0].1 >= w[1].1),
        "{descending:?}"
    );

    // No console message at error level.
    let log = driver.call("POST", &at("/se/log"), Some(json!({"type": "browser"})));
    let errors: Vec<&Value> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");

    // The screenshot: a PNG of the window, with the page drawn on it.
    let shot = driver.call("GET", &at("/screenshot"), None);
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot.as_str().unwrap())
        .unwrap();
    let path = dir.join("report-html.png");
    std::fs::write(&path, &png).unwrap();
    let pixmap = resvg::tiny_skia::Pixmap::decode_png(&png).unwrap();
    assert_eq!(pixmap.width(), 1280, "{}", path.display());
    let inked = pixmap
        .pixels()
        .iter()
        .filter(|p| p.red() < 128 && p.green() < 128 && p.blue() < 128)
        .count();
    assert!(
        inked > 2_000,
        "the screenshot {} looks blank ({inked} dark pixels)",
        path.display()
    );
    eprintln!("screenshot: {}", path.display());
    driver.call("DELETE", &format!("/session/{id}"), None);
}
