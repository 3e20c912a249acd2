//! RTSP helpers: frame a stream fed in given pieces, check a response.

use confab::rtsp::message::{Frame, FrameError, Framer};

/// What a framer made of a stream.
#[derive(Debug)]
pub struct Framed {
    pub frames: Vec<Frame>,
    pub error: Option<FrameError>,
}

/// Feeds `data` in pieces of `sizes` bytes, polling after each, until the data ends or the
/// framer fails.
pub fn frame_all(data: &[u8], sizes: &[usize]) -> Framed {
    let mut framer = Framer::new();
    let mut framed = Framed {
        frames: Vec::new(),
        error: None,
    };
    let mut at = 0;
    for &n in sizes {
        let n = n.min(data.len() - at);
        framer.feed(&data[at..at + n]);
        at += n;
        loop {
            match framer.poll() {
                Ok(Some(f)) => framed.frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(framer.poll().err().as_ref(), Some(&e), "errors are final");
                    framed.error = Some(e);
                    return framed;
                }
            }
        }
    }
    framed
}

/// Checks that `out` is exactly one well-formed RTSP/1.0 response: a status line, header lines
/// without stray CR or LF, and a body as long as its Content-Length. Returns the headers.
pub fn check_response(out: &[u8]) -> Vec<(String, String)> {
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response has a blank line");
    let head = std::str::from_utf8(&out[..end]).expect("a response head is UTF-8");
    let body = &out[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    assert!(status.starts_with("RTSP/1.0 "), "status line {status:?}");
    assert!(
        status.len() >= 13 && status.as_bytes()[9..12].iter().all(u8::is_ascii_digit),
        "status line {status:?}"
    );
    let mut headers = Vec::new();
    for line in lines {
        assert!(
            !line.contains(['\r', '\n']),
            "a header line with a stray CR or LF: {line:?}"
        );
        let (name, value) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("a header line without `: `: {line:?}"));
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "header name {name:?}"
        );
        headers.push((name.to_owned(), value.to_owned()));
    }
    assert!(!status.contains(['\r', '\n']));
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "Content-Length")
        .expect("Content-Length is always written")
        .1
        .parse()
        .expect("Content-Length is a number");
    assert_eq!(length, body.len(), "Content-Length matches the body");
    headers
}
