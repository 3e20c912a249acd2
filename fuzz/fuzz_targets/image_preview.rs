//! Chat image previews on untrusted bytes: `chat::preview::make` sniffs the format, decodes
//! within limits, applies the EXIF orientation, scales and re-encodes. Whatever the input, it
//! returns a preview or an error, never panics, and never takes more than its limits allow
//! (`-rss_limit_mb` catches a decoder that ignores them).
#![no_main]

use confab::chat::preview::{make, Limits, MAX_SIDE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Smaller than the server's limits, so that a run is quick; the checks are the same.
    let limits = Limits {
        max_side: 4096,
        max_pixels: 4_000_000,
        max_alloc: 64 * 1024 * 1024,
    };
    let Ok(p) = make(data, &limits) else {
        return;
    };
    assert!(p.width > 0 && p.height > 0, "{}x{}", p.width, p.height);
    assert!(p.width.max(p.height) <= MAX_SIDE);
    assert!(p.width <= p.original_width.max(1) && p.height <= p.original_height.max(1));
    assert!(p.original_width <= limits.max_side && p.original_height <= limits.max_side);
    // A JPEG that starts with SOI and carries no EXIF segment (APP1).
    assert_eq!(&p.jpeg[..2], &[0xff, 0xd8]);
    assert!(!p.jpeg.windows(6).any(|w| w == b"Exif\0\0"));
    assert!(p.fidelity.psnr.is_finite() && p.fidelity.psnr > 0.0);
    assert!(p.fidelity.ssim <= 1.0 + 1e-9, "{:?}", p.fidelity);
});
