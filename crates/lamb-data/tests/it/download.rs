//! Downloading from a local HTTP server on 127.0.0.1 (never any other address).

use std::fs;
use std::io::{Cursor, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::thread;

use lamb_data::{
    download_dataset, download_official, load, load_with, Cifar100Labels, DataError, DownloadSpec,
    LoadOptions, OfficialData,
};
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
            // Blocks until the client comes (the thread ends with the test process).
            match server.recv() {
                Ok(req) => {
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

/// Serves the named files at `/NAME` to `requests` requests, honouring `Range: bytes=N-` with
/// 206 responses; records the range start of each request (None without a range).
#[allow(clippy::type_complexity)]
fn serve_files(
    files: Vec<(String, Vec<u8>)>,
    requests: usize,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Option<u64>>>>) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    thread::spawn(move || {
        for _ in 0..requests {
            let Ok(req) = server.recv() else {
                break;
            };
            let name = req.url().trim_start_matches('/').to_string();
            let Some((_, body)) = files.iter().find(|(n, _)| *n == name) else {
                let _ = req.respond(tiny_http::Response::from_string("no").with_status_code(404));
                continue;
            };
            let start = req
                .headers()
                .iter()
                .find(|h| h.field.equiv("Range"))
                .and_then(|h| {
                    h.value
                        .as_str()
                        .strip_prefix("bytes=")?
                        .trim_end_matches('-')
                        .parse::<u64>()
                        .ok()
                });
            log.lock().unwrap().push(start);
            let from = start.unwrap_or(0) as usize;
            let part = body[from..].to_vec();
            let len = part.len();
            let code = if start.is_some() { 206 } else { 200 };
            let resp =
                tiny_http::Response::new(code.into(), vec![], Cursor::new(part), Some(len), None);
            let _ = req.respond(resp);
        }
    });
    (format!("http://127.0.0.1:{port}"), seen)
}

/// Announces `announced` bytes but sends only `body`, then closes the connection.
fn serve_short(body: Vec<u8>, announced: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
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
fn interrupted_download_resumes_and_short_bodies_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (gz, md5) = small_release(tmp.path());
    let dest = tmp.path().join("data");
    // Connection closed before the announced length: the partial file is kept ...
    let half = gz.len() / 2;
    let url = serve_short(gz[..half].to_vec(), gz.len());
    let err = download_official(&dest, &spec(url, gz.len(), md5.clone()), false).unwrap_err();
    assert!(matches!(err, DataError::Download { .. }), "{err}");
    assert!(err.to_string().contains("kept for resuming"), "{err}");
    assert_eq!(names_in(&dest), vec!["cifar-10-binary.tar.gz.part"]);
    assert_eq!(
        fs::read(dest.join("cifar-10-binary.tar.gz.part")).unwrap(),
        gz[..half]
    );
    // ... and the next attempt asks only for the rest (a range request) and completes.
    let (url, ranges) = serve_files(vec![("cifar-10-binary.tar.gz".into(), gz.clone())], 1);
    let dir = download_official(
        &dest,
        &spec(
            format!("{url}/cifar-10-binary.tar.gz"),
            gz.len(),
            md5.clone(),
        ),
        false,
    )
    .unwrap();
    assert_eq!(ranges.lock().unwrap().clone(), vec![Some(half as u64)]);
    assert_eq!(load(&dir).unwrap(), load(&tmp.path().join("src")).unwrap());
    assert_eq!(
        names_in(&dest),
        vec!["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]
    );
    let dest = tmp.path().join("data2");
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
        if let Ok(req) = server.recv() {
            let _ = req.respond(tiny_http::Response::from_string("gone").with_status_code(404));
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/x");
    let err = download_official(tmp.path(), &spec(url, 10, "0".repeat(32)), false).unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}

#[test]
fn dataset_names_and_published_checksums() {
    for d in OfficialData::ALL {
        assert_eq!(d.name().parse::<OfficialData>(), Ok(d));
        for f in d.files() {
            assert!(f.url.starts_with("https://") && f.url.ends_with(&f.file_name));
            assert_eq!(f.md5.len(), 32);
        }
    }
    assert_eq!("CIFAR-10".parse(), Ok(OfficialData::Cifar10));
    assert_eq!("fashion_mnist".parse(), Ok(OfficialData::FashionMnist));
    assert!("imagenet"
        .parse::<OfficialData>()
        .unwrap_err()
        .contains("cifar100"));
    let c100 = &OfficialData::Cifar100.files()[0];
    assert_eq!(
        (c100.size, c100.md5.as_str()),
        (168_513_733, "03b5dce01913d631647c71ecec9e9cb8")
    );
    let mnist: u64 = OfficialData::Mnist.files().iter().map(|f| f.size).sum();
    assert_eq!(mnist, 9_912_422 + 28_881 + 1_648_877 + 4_542);
}

fn md5_hex(b: &[u8]) -> String {
    Md5::digest(b).iter().map(|b| format!("{b:02x}")).collect()
}

/// The IDX files of a tiny MNIST: (name, gzipped bytes).
fn tiny_mnist() -> Vec<(String, Vec<u8>)> {
    let images = |n: u32| {
        let mut b = vec![0, 0, 8, 3];
        for v in [n, 28, 28] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend((0..n * 784).map(|i| i as u8));
        b
    };
    let labels = |l: &[u8]| {
        let mut b = vec![0, 0, 8, 1];
        b.extend_from_slice(&(l.len() as u32).to_be_bytes());
        b.extend_from_slice(l);
        b
    };
    vec![
        ("train-images-idx3-ubyte.gz".into(), gzip(&images(3))),
        (
            "train-labels-idx1-ubyte.gz".into(),
            gzip(&labels(&[1, 2, 3])),
        ),
        ("t10k-images-idx3-ubyte.gz".into(), gzip(&images(1))),
        ("t10k-labels-idx1-ubyte.gz".into(), gzip(&labels(&[7]))),
    ]
}

#[test]
fn mnist_downloads_each_file_verified_from_a_mirror() {
    let tmp = tempfile::tempdir().unwrap();
    let files = tiny_mnist();
    // The published sizes and md5s do not match the tiny files: refused, naming the file.
    let (url, _) = serve_files(files.clone(), 1);
    let err = download_dataset(OfficialData::Mnist, tmp.path(), Some(&url), false).unwrap_err();
    assert!(matches!(err, DataError::Verify { .. }), "{err}");
    assert!(
        err.to_string().contains("train-images-idx3-ubyte.gz"),
        "{err}"
    );
    assert!(!tmp.path().join("mnist/train-images-idx3-ubyte.gz").exists());
    // With specs matching the tiny files, the same code path completes.
    let dir = tmp.path().join("mnist");
    let (url, _) = serve_files(files.clone(), 4);
    for (name, bytes) in &files {
        let s = DownloadSpec {
            url: format!("{url}/{name}"),
            size: bytes.len() as u64,
            md5: md5_hex(bytes),
            file_name: name.clone(),
        };
        lamb_data::fetch_verified(&dir, &s, false).unwrap();
    }
    let s = load(&dir).unwrap();
    assert_eq!((s.train.len(), s.test.len(), s.train.channels), (3, 1, 1));
    assert_eq!(s.test.labels, vec![7]);
}

#[test]
fn cifar100_archive_extracts_and_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = |coarse: u8, fine: u8| {
        let mut r = vec![coarse, fine];
        r.extend(std::iter::repeat_n(fine, 3072));
        r
    };
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("cifar-100-binary/{name}"), bytes)
            .unwrap();
    };
    add("train.bin", &[rec(1, 10), rec(2, 20)].concat());
    add("test.bin", &rec(3, 30));
    let coarse: String = (0..20).map(|i| format!("c{i}\n")).collect();
    add("coarse_label_names.txt", coarse.as_bytes());
    let gz = gzip(&b.into_inner().unwrap());
    let archive = tmp.path().join("cifar-100-binary.tar.gz");
    fs::write(&archive, &gz).unwrap();
    let dir = lamb_data::extract_cifar100(&archive, &tmp.path().join("data")).unwrap();
    assert_eq!(dir, tmp.path().join("data/cifar-100-binary"));
    let s = load(&tmp.path().join("data")).unwrap();
    assert_eq!(s.train.labels, vec![10, 20]);
    let opts = LoadOptions {
        cifar100_labels: Cifar100Labels::Coarse,
        ..Default::default()
    };
    let s = load_with(&dir, &opts).unwrap();
    assert_eq!(
        (s.train.labels.clone(), s.train.class_names[2].as_str()),
        (vec![1, 2], "c2")
    );
}

#[test]
fn first_use_downloads_when_allowed_and_explains_when_not() {
    let tmp = tempfile::tempdir().unwrap();
    let (gz, md5) = small_release(tmp.path());
    let cwd = tmp.path().join("project");
    fs::create_dir(&cwd).unwrap();
    let exe = cwd.join("bin/lamb");
    // Forbidden (--no-download): the search's error, unchanged.
    let err =
        lamb_data::locate_or_download_in(None, None, Some(&cwd), Some(&exe), None).unwrap_err();
    assert!(matches!(err, DataError::NoData { .. }), "{err}");
    // Allowed: downloads into ./data, verified, and the next search finds it without network.
    let (url, _) = serve_files(vec![("c.tar.gz".into(), gz.clone())], 1);
    let auto = lamb_data::AutoDownload {
        dest_dir: cwd.join("data"),
        spec: spec(format!("{url}/c.tar.gz"), gz.len(), md5.clone()),
        progress: false,
    };
    let dir =
        lamb_data::locate_or_download_in(None, None, Some(&cwd), Some(&exe), Some(&auto)).unwrap();
    assert_eq!(dir, cwd.join("data/cifar-10-batches-bin"));
    assert_eq!(load(&dir).unwrap(), load(&tmp.path().join("src")).unwrap());
    let again = lamb_data::locate_data_in(None, None, Some(&cwd), Some(&exe)).unwrap();
    assert_eq!(again, dir);
    // A failed download keeps the search's help and names the cause.
    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/x.tar.gz", dead.local_addr().unwrap());
    drop(dead);
    let auto = lamb_data::AutoDownload {
        dest_dir: other.join("data"),
        spec: spec(dead_url, gz.len(), md5),
        progress: false,
    };
    let err = lamb_data::locate_or_download_in(None, None, Some(&other), Some(&exe), Some(&auto))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("automatic download") && msg.contains("no CIFAR-10 data found"),
        "{msg}"
    );
}
