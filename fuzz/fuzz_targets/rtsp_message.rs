//! The RTSP framer on arbitrary bytes: it never panics, how the stream is split into reads
//! never changes what it frames, and every request it frames survives being written back (as
//! the cluster's RTSP relay passes it on, `Request::write`) and framed again.
#![no_main]

use confab::rtsp::message::{Frame, Framer, Response};
use confab_fuzz::rtsp::frame_all;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = frame_all(data, &[data.len()]);
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
        let n = (1 + seed as usize % 64).min(left);
        sizes.push(n);
        left -= n;
    }
    let chunked = frame_all(data, &sizes);
    assert_eq!(
        whole.frames, chunked.frames,
        "splitting the input changed the frames"
    );
    assert_eq!(
        whole.error.as_ref().map(|e| (&e.kind, e.position)),
        chunked.error.as_ref().map(|e| (&e.kind, e.position)),
        "splitting the input changed the error"
    );
    if data.len() <= 2048 {
        let bytewise = frame_all(data, &vec![1; data.len()]);
        assert_eq!(whole.frames, bytewise.frames);
    }

    for frame in &whole.frames {
        let Frame::Request(req) = frame else { continue };
        let mut text = Vec::new();
        req.write(&mut text);
        let mut framer = Framer::new();
        framer.feed(&text);
        match framer.poll() {
            Ok(Some(Frame::Request(again))) => {
                assert_eq!(again.method, req.method);
                assert_eq!(again.uri, req.uri);
                assert_eq!(again.version, req.version);
                assert_eq!(again.headers, req.headers);
                assert_eq!(again.body, req.body);
            }
            other => panic!("a framed request, written back, framed as {other:?}"),
        }
        assert_eq!(framer.buffered(), 0);
        // An error answer echoing what the client wrote is still one well-formed response.
        let status = 400 + (req.body.len() % 200) as u16;
        let message = req
            .headers
            .first()
            .map_or(req.uri.as_str(), |h| h.1.as_str());
        let mut out = Vec::new();
        Response::error(status, message).write(&mut out);
        confab_fuzz::rtsp::check_response(&out);
    }
});
