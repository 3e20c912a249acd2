//! The HTTP MJPEG part splitter (`bridge::multipart::Splitter`) on arbitrary bytes: it never
//! panics, never holds more than its capacity, never yields a part over its limit, splits the
//! same (parts and kind of error) however the stream is cut into pushes, and what it yields,
//! written back as a clean stream, splits into the same parts again.
#![no_main]

use confab::bridge::multipart::{Limits, MultipartError, Splitter};
use libfuzzer_sys::fuzz_target;

/// Small limits, so that the fuzzer reaches them.
const LIMITS: Limits = Limits {
    max_part: 512,
    max_headers: 96,
    max_junk: 256,
};

const BOUNDARIES: [&str; 4] = ["b", "frame", "--myboundary", "ffmpeg"];

type Parts = Vec<(Option<String>, Vec<u8>)>;

fn split(boundary: &str, data: &[u8], sizes: &[usize]) -> (Parts, Option<MultipartError>) {
    let mut s = Splitter::new(boundary, LIMITS).expect("the boundaries used here are valid");
    let mut parts = Vec::new();
    let mut rest = data;
    for &n in sizes {
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        if let Err(e) = s.push(piece) {
            return (parts, Some(e));
        }
        assert!(s.buffered() <= s.capacity(), "{} bytes held", s.buffered());
        loop {
            match s.next_part() {
                Ok(Some(p)) => {
                    assert!(
                        p.body.len() <= LIMITS.max_part,
                        "a part of {}",
                        p.body.len()
                    );
                    parts.push((p.content_type, p.body.to_vec()));
                }
                Ok(None) => break,
                Err(e) => return (parts, Some(e)),
            }
            assert!(s.buffered() <= s.capacity(), "{} bytes held", s.buffered());
        }
    }
    (parts, None)
}

fn kind(e: &Option<MultipartError>) -> Option<std::mem::Discriminant<MultipartError>> {
    e.as_ref().map(std::mem::discriminant)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, data)) = data.split_first() else {
        return;
    };
    let boundary = BOUNDARIES[pick as usize % BOUNDARIES.len()];
    // Pushes of at most 4096 bytes (the splitter's limit is larger; the fuzzer's inputs small).
    let whole_sizes: Vec<usize> = data.chunks(4096).map(<[u8]>::len).collect();
    let whole = split(boundary, data, &whole_sizes);

    // Split points from the data itself, so that the fuzzer explores them too.
    let mut seed = data
        .iter()
        .fold(0x9e37_79b9u32, |h, &b| h.rotate_left(5) ^ u32::from(b));
    let mut sizes = Vec::new();
    let mut left = data.len();
    while left > 0 {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = (1 + seed as usize % 97).min(left);
        sizes.push(n);
        left -= n;
    }
    let cut = split(boundary, data, &sizes);
    assert_eq!(whole.0, cut.0, "cutting the input changed the parts");
    assert_eq!(
        kind(&whole.1),
        kind(&cut.1),
        "cutting the input changed the error"
    );
    if data.len() <= 4096 {
        let bytewise = split(boundary, data, &vec![1; data.len()]);
        assert_eq!(whole.0, bytewise.0, "byte by byte, the parts differ");
        assert_eq!(kind(&whole.1), kind(&bytewise.1));
    }

    // Written back as a server with Content-Length would, the parts split the same.
    let token = boundary.trim_start_matches('-');
    let mut clean = Vec::new();
    for (content_type, body) in &whole.0 {
        clean.extend_from_slice(format!("--{token}\r\n").as_bytes());
        let length = format!("Content-Length: {}\r\n\r\n", body.len());
        let mut headers = String::new();
        if let Some(t) = content_type {
            headers = format!("Content-Type: {t}\r\n");
        }
        if headers.len() + length.len() > LIMITS.max_headers {
            headers.clear();
        }
        clean.extend_from_slice(headers.as_bytes());
        clean.extend_from_slice(length.as_bytes());
        clean.extend_from_slice(body);
        clean.extend_from_slice(b"\r\n");
    }
    clean.extend_from_slice(format!("--{token}--\r\n").as_bytes());
    let sizes: Vec<usize> = clean.chunks(4096).map(<[u8]>::len).collect();
    let again = split(boundary, &clean, &sizes);
    assert_eq!(again.1, None, "a clean stream of the parts fails");
    let bodies = |p: &Parts| p.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>();
    assert_eq!(
        bodies(&again.0),
        bodies(&whole.0),
        "written back, the parts differ"
    );
});
