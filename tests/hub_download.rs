//! `hub::resolve` downloads through hf-hub when a hub id is neither local
//! nor cached. The Hub is played by a local HTTP server (`HF_ENDPOINT`)
//! that answers the way huggingface.co does (ETag, X-Repo-Commit,
//! Content-Range on ranged GETs); the files are the hf-tiny-vit fixture.
//! Own test binary: it sets process-wide environment variables.

mod common;

use common::repo_path;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use vitnas::hub::resolve;
use vitnas::models::export::load_dir;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Answers ranged GETs of `/<repo>/resolve/main/<file>` from the fixture
/// directory (`bytes=0-0` probes get one byte, `bytes=N-` the rest), 404
/// otherwise; one request per connection.
fn serve(listener: TcpListener, repo: &'static str) {
    let fixture = repo_path("tests/fixtures/hf-tiny-vit");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { return };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request = String::new();
        reader.read_line(&mut request).unwrap();
        let mut range: (usize, Option<usize>) = (0, None);
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                let mut it = r.trim().split('-');
                let start = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                range = (start, it.next().and_then(|v| v.parse().ok()));
            }
        }
        let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
        let file = path
            .strip_prefix(&format!("/{repo}/resolve/main/"))
            .map(str::to_string);
        let bytes = file
            .as_ref()
            .and_then(|f| std::fs::read(fixture.join(f)).ok());
        let reply = match (file, bytes) {
            (Some(name), Some(bytes)) => {
                let size = bytes.len();
                let (start, end) = (range.0, range.1.unwrap_or(size - 1).min(size - 1));
                let part = &bytes[start..=end];
                let mut head = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{size}\r\nETag: \"etag-{name}\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n\r\n",
                    part.len()
                )
                .into_bytes();
                head.extend_from_slice(part);
                head
            }
            _ => {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
            }
        };
        stream.write_all(&reply).ok();
    }
}

#[test]
fn an_uncached_hub_id_is_downloaded_into_the_cache_layout() {
    for k in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        std::env::remove_var(k);
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || serve(listener, "vitnas/tiny-vit"));
    let cache = std::env::temp_dir().join(format!("vitnas-hub-dl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    std::env::set_var("HF_HUB_CACHE", &cache);
    std::env::set_var("HF_ENDPOINT", format!("http://{addr}"));
    std::env::remove_var("HF_HUB_OFFLINE");
    let dir = resolve("vitnas/tiny-vit").unwrap();
    assert_eq!(
        dir,
        cache
            .join("models--vitnas--tiny-vit/snapshots")
            .join(COMMIT)
    );
    // The downloaded files are the fixture's, byte for byte, and load.
    for f in ["config.json", "model.safetensors"] {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(repo_path("tests/fixtures/hf-tiny-vit").join(f)).unwrap(),
            "{f}"
        );
    }
    let (model, _) = load_dir(&dir).unwrap();
    assert_eq!(model.config.hidden_size, 48);
    // Now cached: resolved offline, without the server.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    assert_eq!(resolve("vitnas/tiny-vit").unwrap(), dir);
    // Not on the "Hub" and online: the error says where it looked and why
    // the download failed.
    std::env::remove_var("HF_HUB_OFFLINE");
    let msg = resolve("vitnas/absent").unwrap_err().to_string();
    assert!(
        msg.contains("models--vitnas--absent")
            && msg.contains("config.json")
            && msg.contains("failed"),
        "{msg}"
    );
    std::fs::remove_dir_all(cache).ok();
}
