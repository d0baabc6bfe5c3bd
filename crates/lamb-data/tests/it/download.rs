//! Downloading from a local HTTP server on 127.0.0.1 (never any other address).

use std::fs;
use std::io::{Cursor, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::thread;
use std::time::Duration;

use lamb_data::{download_official, load, DataError, DownloadSpec};
use md5::{Digest, Md5};

use crate::common::{gzip, names_in, write_official_dir};

/// A small archive in the official layout and its md5.
fn small_release(tmp: &Path) -> (Vec<u8>, String) {
    let dir = tmp.join("src/cifar-10-batches-bin");
    write_official_dir(&dir, [1, 1, 2, 1, 1, 2]);
    fs::write(
        dir.join("batches.meta.txt"),
        lamb_data::CIFAR10_CLASSES.join("\n"),
    )
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all("cifar-10-batches-bin", &dir).unwrap();
    let gz = gzip(&b.into_inner().unwrap());
    let md5: String = Md5::digest(&gz)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (gz, md5)
}

/// Serves `body` to `requests` requests on an ephemeral loopback port; returns the URL.
fn serve(body: Vec<u8>, requests: usize) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    thread::spawn(move || {
        for _ in 0..requests {
            match server.recv_timeout(Duration::from_secs(20)) {
                Ok(Some(req)) => {
                    let len = body.len();
                    let resp = tiny_http::Response::new(
                        200.into(),
                        vec![],
                        Cursor::new(body.clone()),
                        Some(len),
                        None,
                    );
                    let _ = req.respond(resp);
                }
                _ => break,
            }
        }
    });
    format!("http://127.0.0.1:{port}/cifar-10-binary.tar.gz")
}

/// Announces `announced` bytes but sends only `body`, then closes the connection.
fn serve_short(body: Vec<u8>, announced: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {announced}\r\nConnection: close\r\n\r\n"
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    format!("http://127.0.0.1:{port}/cifar-10-binary.tar.gz")
}

fn spec(url: String, size: usize, md5: String) -> DownloadSpec {
    DownloadSpec {
        url,
        size: size as u64,
        md5,
        file_name: "cifar-10-binary.tar.gz".into(),
    }
}

#[test]
fn official_spec_matches_the_published_release() {
    let s = DownloadSpec::official();
    assert_eq!(
        s.url,
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    );
    assert_eq!(
        (s.size, s.md5.as_str()),
        (170_052_171, "c32a1d4ab5d03f1284b67883e8d87530")
    );
}

#[test]
fn downloads_verifies_extracts_and_reuses() {
    let tmp = tempfile::tempdir().unwrap();
    let (gz, md5) = small_release(tmp.path());
    let dest = tmp.path().join("data");
    let url = serve(gz.clone(), 1);
    let dir = download_official(&dest, &spec(url, gz.len(), md5.clone()), false).unwrap();
    assert_eq!(dir, dest.join("cifar-10-batches-bin"));
    assert_eq!(
        names_in(&dest),
        vec!["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]
    );
    let expected = load(&tmp.path().join("src")).unwrap();
    assert_eq!(load(&dir).unwrap(), expected);
    // A second call finds the verified archive and does not connect (nothing listens there).
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/x.tar.gz", dead.local_addr().unwrap());
    drop(dead);
    let dir2 = download_official(&dest, &spec(url, gz.len(), md5), false).unwrap();
    assert_eq!(load(&dir2).unwrap(), expected);
}

#[test]
fn md5_mismatch_leaves_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (gz, _) = small_release(tmp.path());
    let dest = tmp.path().join("data");
    let url = serve(gz.clone(), 1);
    let wrong = "0".repeat(32);
    let err = download_official(&dest, &spec(url, gz.len(), wrong), false).unwrap_err();
    assert!(
        matches!(err, DataError::Verify { what: "md5", .. }),
        "{err}"
    );
    assert!(names_in(&dest).is_empty(), "{:?}", names_in(&dest));
}

#[test]
fn truncated_body_is_an_error_and_leaves_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (gz, md5) = small_release(tmp.path());
    let dest = tmp.path().join("data");
    // Connection closed before the announced length.
    let url = serve_short(gz[..gz.len() / 2].to_vec(), gz.len());
    let err = download_official(&dest, &spec(url, gz.len(), md5.clone()), false).unwrap_err();
    assert!(matches!(err, DataError::Download { .. }), "{err}");
    assert!(names_in(&dest).is_empty(), "{:?}", names_in(&dest));
    // A complete response that is shorter than expected.
    let url = serve(gz[..gz.len() - 10].to_vec(), 1);
    let err = download_official(&dest, &spec(url, gz.len(), md5), false).unwrap_err();
    assert!(matches!(err, DataError::Verify { .. }), "{err}");
    assert!(names_in(&dest).is_empty(), "{:?}", names_in(&dest));
}

#[test]
fn http_error_status_is_reported() {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    thread::spawn(move || {
        if let Ok(Some(req)) = server.recv_timeout(Duration::from_secs(20)) {
            let _ = req.respond(tiny_http::Response::from_string("gone").with_status_code(404));
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/x");
    let err = download_official(tmp.path(), &spec(url, 10, "0".repeat(32)), false).unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}
