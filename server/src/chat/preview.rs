//! Previews of images shared in the chat: what the page shows inline instead of the original.
//!
//! A preview is the original turned upright (its EXIF orientation applied), flattened onto
//! white if it has transparency, scaled so that its longest side is at most
//! [`MAX_SIDE`] pixels, and encoded afresh as JPEG. Encoding afresh is what strips the
//! metadata: nothing of the original's EXIF (GPS position, camera serial, time), XMP, IPTC or
//! ICC segments is copied, so a photo's location does not travel with its preview. The
//! original stays downloadable unchanged for whoever needs it.
//!
//! Each preview comes with how faithful it is: PSNR and SSIM of its luma (BT.601, as JPEG
//! codes it) against the upright original scaled to the same size with the same filter, so
//! the figures measure what the JPEG encoding lost, not the scaling. Both are computed here.
//! The crate that offers them on `image` buffers, `image-compare`, sums each window's
//! (co)variances where SSIM averages them, so its constants weigh 64 times less and smooth
//! pictures score far too low (a gradient at 52 dB PSNR got 0.82); `dssim-core` is AGPL; the
//! `ssim` crate is a single 0.1 release. SSIM here is Wang et al. 2004 (IEEE TIP 13(4), eq. 13)
//! with the paper's K1 = 0.01, K2 = 0.03 and L = 255, over 8x8 windows every 4 pixels, averaged;
//! PSNR is 10·log10(255² / MSE), capped at [`MAX_PSNR`] for identical pictures (where it is
//! infinite).
//!
//! Untrusted bytes: only JPEG, PNG, GIF and WebP are decoded; the format is sniffed from the
//! content, never taken from the uploader's file name or type. Width, height, pixel count and
//! the decoder's allocations are bounded before any pixel is decoded ([`Limits`]), so a small
//! file claiming a huge picture (a decompression bomb) is refused instead of exhausting
//! memory. Every failure is a [`PreviewError`]; nothing here panics on any input (the fuzz
//! target `image_preview` checks that).

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

/// The longest side of a preview, in pixels.
pub const MAX_SIDE: u32 = 1280;
/// JPEG quality of previews (1–100).
pub const QUALITY: u8 = 85;
/// PSNR reported for a preview identical to its reference (where PSNR is infinite).
pub const MAX_PSNR: f64 = 100.0;

/// How much of an untrusted image the decoder may take on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Widest and tallest picture accepted.
    pub max_side: u32,
    /// Most pixels (width × height) accepted.
    pub max_pixels: u64,
    /// Most bytes the decoder may allocate at once.
    pub max_alloc: u64,
}

impl Default for Limits {
    /// Enough for any camera's photo (up to 100 megapixels), small enough that decoding one
    /// never takes more than a few hundred MiB.
    fn default() -> Self {
        Limits {
            max_side: 20_000,
            max_pixels: 100_000_000,
            max_alloc: 512 * 1024 * 1024,
        }
    }
}

/// How close a preview is to its reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fidelity {
    /// Peak signal-to-noise ratio of the luma, dB (higher is closer; above ~35 dB the
    /// difference is hard to see).
    pub psnr: f64,
    /// Mean structural similarity of the luma, up to 1.0 (identical).
    pub ssim: f64,
}

/// A finished preview.
#[derive(Debug, Clone)]
pub struct Preview {
    /// The JPEG file.
    pub jpeg: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// The original's size after its orientation was applied.
    pub original_width: u32,
    pub original_height: u32,
    pub fidelity: Fidelity,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreviewError {
    #[error("not an image confab can preview (JPEG, PNG, GIF or WebP)")]
    NotAnImage,
    #[error("a {width}x{height} image is larger than the {limit} this server previews")]
    TooLarge {
        width: u32,
        height: u32,
        limit: String,
    },
    #[error("the {format} image could not be decoded: {reason}")]
    Decode {
        format: &'static str,
        reason: String,
    },
    #[error("the preview could not be encoded: {0}")]
    Encode(String),
}

/// Makes the preview of `bytes` (an uploaded file).
pub fn make(bytes: &[u8], limits: &Limits) -> Result<Preview, PreviewError> {
    let upright = decode(bytes, limits)?;
    let (original_width, original_height) = (upright.width(), upright.height());
    let rgb = flatten(upright);
    let reference = scale(&rgb, MAX_SIDE);
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, QUALITY)
        .encode_image(&reference)
        .map_err(|e| PreviewError::Encode(e.to_string()))?;
    let decoded = image::load_from_memory_with_format(&jpeg, ImageFormat::Jpeg)
        .map_err(|e| PreviewError::Encode(format!("reading it back: {e}")))?
        .to_rgb8();
    let fidelity = compare(&reference, &decoded)
        .ok_or_else(|| PreviewError::Encode("it decodes to another size".into()))?;
    Ok(Preview {
        width: reference.width(),
        height: reference.height(),
        jpeg,
        original_width,
        original_height,
        fidelity,
    })
}

/// Decodes an image within `limits` and turns it upright.
fn decode(bytes: &[u8], limits: &Limits) -> Result<DynamicImage, PreviewError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| PreviewError::NotAnImage)?;
    let format = match reader.format() {
        Some(ImageFormat::Jpeg) => "JPEG",
        Some(ImageFormat::Png) => "PNG",
        Some(ImageFormat::Gif) => "GIF",
        Some(ImageFormat::WebP) => "WebP",
        _ => return Err(PreviewError::NotAnImage),
    };
    let bad = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => PreviewError::TooLarge {
            width: 0,
            height: 0,
            limit: format!("{} bytes of memory", limits.max_alloc),
        },
        e => PreviewError::Decode {
            format,
            reason: e.to_string(),
        },
    };
    let mut reader = reader;
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    decoder_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(|e| match e {
        image::ImageError::Limits(_) => PreviewError::TooLarge {
            width: 0,
            height: 0,
            limit: format!("{0}x{0} pixels", limits.max_side),
        },
        e => bad(e),
    })?;
    let (width, height) = decoder.dimensions();
    // Checked here too: the allocation limit is advisory for some decoders.
    if u64::from(width) * u64::from(height) > limits.max_pixels
        || width > limits.max_side
        || height > limits.max_side
    {
        return Err(PreviewError::TooLarge {
            width,
            height,
            limit: format!("{} megapixels", limits.max_pixels / 1_000_000),
        });
    }
    if width == 0 || height == 0 {
        return Err(PreviewError::Decode {
            format,
            reason: "it has no pixels".into(),
        });
    }
    // A broken EXIF block does not make the picture unusable: show it as stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(bad)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// RGB, with any transparency composed onto white (JPEG has no alpha, and a transparent
/// picture is usually drawn for a light page).
fn flatten(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u16::from(p[3]);
        for c in 0..3 {
            // (value·a + 255·(255 − a)) / 255, rounded; at most 255.
            let v = (u16::from(p[c]) * a + 255 * (255 - a) + 127) / 255;
            o[c] = u8::try_from(v).unwrap_or(u8::MAX);
        }
    }
    out
}

/// `img` scaled so that its longest side is at most `max_side` (unchanged if it already is).
pub fn scale(img: &RgbImage, max_side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let longest = w.max(h);
    if longest <= max_side {
        return img.clone();
    }
    let fit = |side: u32| {
        let scaled = u64::from(side) * u64::from(max_side) / u64::from(longest);
        u32::try_from(scaled).unwrap_or(max_side).max(1)
    };
    // Triangle (linear) filtering widened to the scale factor: every source pixel counts,
    // unlike nearest or a fixed-width kernel, and it is several times quicker than Lanczos.
    image::imageops::resize(img, fit(w), fit(h), FilterType::Triangle)
}

/// PSNR and SSIM of the luma of `b` against `a`; `None` if their sizes differ.
pub fn compare(a: &RgbImage, b: &RgbImage) -> Option<Fidelity> {
    if a.dimensions() != b.dimensions() || a.width() == 0 || a.height() == 0 {
        return None;
    }
    let (w, h) = (a.width() as usize, a.height() as usize);
    let (x, y) = (luma(a), luma(b));
    let mse = x
        .iter()
        .zip(&y)
        .map(|(p, q)| f64::from(p - q).powi(2))
        .sum::<f64>()
        / (w * h) as f64;
    let psnr = if mse <= 0.0 {
        MAX_PSNR
    } else {
        (10.0 * (255.0f64.powi(2) / mse).log10()).min(MAX_PSNR)
    };
    Some(Fidelity {
        psnr,
        ssim: ssim(&x, &y, w, h),
    })
}

/// BT.601 luma, 0..255.
fn luma(img: &RgbImage) -> Vec<f32> {
    img.pixels()
        .map(|p| 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]))
        .collect()
}

/// Mean SSIM of two `w`×`h` luma planes (see the module's notes).
fn ssim(x: &[f32], y: &[f32], w: usize, h: usize) -> f64 {
    const WINDOW: usize = 8;
    const STEP: usize = 4;
    const C1: f64 = (0.01 * 255.0) * (0.01 * 255.0);
    const C2: f64 = (0.03 * 255.0) * (0.03 * 255.0);
    // Pictures smaller than a window are one window.
    let (ww, wh) = (WINDOW.min(w), WINDOW.min(h));
    let n = (ww * wh) as f64;
    let mut total = 0.0;
    let mut windows = 0usize;
    let starts = |len: usize, win: usize| (0..=len - win).step_by(STEP);
    for top in starts(h, wh) {
        for left in starts(w, ww) {
            let (mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for row in top..top + wh {
                let at = row * w + left;
                for (&p, &q) in x[at..at + ww].iter().zip(&y[at..at + ww]) {
                    let (p, q) = (f64::from(p), f64::from(q));
                    sx += p;
                    sy += q;
                    sxx += p * p;
                    syy += q * q;
                    sxy += p * q;
                }
            }
            let (mx, my) = (sx / n, sy / n);
            let vx = (sxx / n - mx * mx).max(0.0);
            let vy = (syy / n - my * my).max(0.0);
            let cov = sxy / n - mx * my;
            total += ((2.0 * mx * my + C1) * (2.0 * cov + C2))
                / ((mx * mx + my * my + C1) * (vx + vy + C2));
            windows += 1;
        }
    }
    total / windows.max(1) as f64
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A smooth picture (gradients) `w`×`h`: red grows to the right, green downwards.
    pub fn smooth(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let r = (x * 255 / w.max(1)) as u8;
            let g = (y * 255 / h.max(1)) as u8;
            image::Rgb([r, g, 128u8.wrapping_add(((x + y) / 8) as u8 % 32)])
        })
    }

    /// A JPEG of `img` with an EXIF block holding `orientation` and a GPS position, as a phone
    /// writes it: APP1 right after SOI.
    pub fn jpeg_with_exif(img: &RgbImage, orientation: u16) -> Vec<u8> {
        let mut plain = Vec::new();
        JpegEncoder::new_with_quality(&mut plain, 95)
            .encode_image(img)
            .unwrap();
        // TIFF, little endian: IFD0 at 8 with Orientation and a GPS IFD pointer; the GPS IFD
        // at 38 with GPSLatitudeRef "N" and GPSLatitude 48/1 51/1 30/1 (the values at 68).
        let mut tiff: Vec<u8> = b"II\x2a\x00\x08\x00\x00\x00".to_vec();
        let entry = |tag: u16, kind: u16, count: u32, value: [u8; 4]| {
            let mut e = Vec::new();
            e.extend_from_slice(&tag.to_le_bytes());
            e.extend_from_slice(&kind.to_le_bytes());
            e.extend_from_slice(&count.to_le_bytes());
            e.extend_from_slice(&value);
            e
        };
        let o = orientation.to_le_bytes();
        tiff.extend_from_slice(&2u16.to_le_bytes());
        tiff.extend(entry(0x0112, 3, 1, [o[0], o[1], 0, 0])); // Orientation, SHORT
        tiff.extend(entry(0x8825, 4, 1, 38u32.to_le_bytes())); // GPS IFD, LONG
        tiff.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(tiff.len(), 38);
        tiff.extend_from_slice(&2u16.to_le_bytes());
        tiff.extend(entry(0x0001, 2, 2, *b"N\0\0\0")); // GPSLatitudeRef, ASCII
        tiff.extend(entry(0x0002, 5, 3, 68u32.to_le_bytes())); // GPSLatitude, RATIONAL
        tiff.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(tiff.len(), 68);
        for (n, d) in [(48u32, 1u32), (51, 1), (30, 1)] {
            tiff.extend_from_slice(&n.to_le_bytes());
            tiff.extend_from_slice(&d.to_le_bytes());
        }
        let mut app1 = vec![0xff, 0xe1];
        let len = u16::try_from(2 + 6 + tiff.len()).unwrap();
        app1.extend_from_slice(&len.to_be_bytes());
        app1.extend_from_slice(b"Exif\0\0");
        app1.extend(tiff);
        let mut out = plain[..2].to_vec(); // SOI
        out.extend(app1);
        out.extend_from_slice(&plain[2..]);
        out
    }

    /// The JPEG segments' markers up to the image data (SOS).
    fn markers(jpeg: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 2;
        while i + 4 <= jpeg.len() && jpeg[i] == 0xff {
            let marker = jpeg[i + 1];
            out.push(marker);
            if marker == 0xda {
                break;
            }
            let len = usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
            i += 2 + len;
        }
        out
    }

    #[test]
    fn exif_orientation_is_applied_and_metadata_stripped() {
        let original = jpeg_with_exif(&smooth(1600, 1000), 6);
        assert!(markers(&original).contains(&0xe1), "the test file has EXIF");
        let p = make(&original, &Limits::default()).unwrap();
        // 6: rotate 90° clockwise to show it; 1600x1000 stands as 1000x1600, then fits 1280.
        assert_eq!((p.original_width, p.original_height), (1000, 1600));
        assert_eq!((p.width, p.height), (800, 1280));
        // The stored picture's left edge (no red) is now its top.
        let shown = image::load_from_memory(&p.jpeg).unwrap().to_rgb8();
        assert_eq!(shown.dimensions(), (800, 1280));
        assert!(
            shown.get_pixel(400, 5)[0] < 30,
            "{:?}",
            shown.get_pixel(400, 5)
        );
        assert!(shown.get_pixel(400, 1274)[0] > 225);
        // No APPn segment but JFIF (APP0) is written; the GPS block is gone.
        let m = markers(&p.jpeg);
        assert!(m.iter().all(|&k| !(0xe1..=0xef).contains(&k)), "{m:x?}");
        let gps = [48u8, 0, 0, 0, 1, 0, 0, 0, 51, 0, 0, 0, 1, 0, 0, 0];
        assert!(!p.jpeg.windows(gps.len()).any(|w| w == gps));
        assert!(!p.jpeg.windows(4).any(|w| w == b"Exif"));
        // A smooth picture survives JPEG at 85 almost unchanged.
        assert!(p.fidelity.psnr > 30.0, "{:?}", p.fidelity);
        assert!(p.fidelity.ssim > 0.9, "{:?}", p.fidelity);
        assert!(p.jpeg.len() < original.len());
    }

    #[test]
    fn orientations_table() {
        // (EXIF orientation, shown size of a 64x32 picture)
        let cases = [
            (1, (64, 32)),
            (3, (64, 32)),
            (6, (32, 64)),
            (8, (32, 64)),
            (5, (32, 64)),
        ];
        for (o, want) in cases {
            let p = make(&jpeg_with_exif(&smooth(64, 32), o), &Limits::default()).unwrap();
            assert_eq!((p.width, p.height), want, "orientation {o}");
        }
    }

    #[test]
    fn fidelity_tells_garbage_from_the_original() {
        let a = smooth(320, 200);
        let same = compare(&a, &a).unwrap();
        assert_eq!(same.psnr, MAX_PSNR);
        assert!((same.ssim - 1.0).abs() < 1e-9, "{same:?}");
        let mut seed = 0x2545_f491_u32;
        let noise = RgbImage::from_fn(320, 200, |_, _| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let [r, g, b, _] = seed.to_le_bytes();
            image::Rgb([r, g, b])
        });
        let garbage = compare(&a, &noise).unwrap();
        assert!(garbage.psnr < 15.0, "{garbage:?}");
        assert!(garbage.ssim < 0.2, "{garbage:?}");
        assert!(compare(&a, &smooth(10, 10)).is_none());
        // Known values: a uniform shift by 10 has MSE 100, so PSNR 10·log10(255²/100); the
        // windows have no variance, so SSIM is the luminance term alone.
        let flat = |v: u8| RgbImage::from_pixel(64, 48, image::Rgb([v, v, v]));
        let f = compare(&flat(100), &flat(110)).unwrap();
        assert!((f.psnr - 28.1308).abs() < 1e-3, "{f:?}");
        let c1 = (0.01f64 * 255.0).powi(2);
        let want = (2.0 * 100.0 * 110.0 + c1) / (100.0f64.powi(2) + 110.0f64.powi(2) + c1);
        assert!((f.ssim - want).abs() < 1e-4, "{f:?} want {want}");
    }

    #[test]
    fn small_and_transparent_images() {
        // Small pictures keep their size; transparency becomes white.
        let mut png = Vec::new();
        let rgba = image::RgbaImage::from_fn(40, 30, |x, _| {
            image::Rgba([0, 0, 0, if x < 20 { 0 } else { 255 }])
        });
        DynamicImage::ImageRgba8(rgba)
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        let p = make(&png, &Limits::default()).unwrap();
        assert_eq!((p.width, p.height), (40, 30));
        let shown = image::load_from_memory(&p.jpeg).unwrap().to_rgb8();
        assert!(shown.get_pixel(5, 15)[0] > 240, "transparent → white");
        assert!(shown.get_pixel(35, 15)[0] < 15, "opaque black stays");
    }

    /// CRC-32 (IEEE) of PNG chunks, bit by bit: only for building test files.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn bad_images_are_errors_not_panics() {
        let good = jpeg_with_exif(&smooth(64, 48), 1);
        // A PNG whose header claims 60000x60000 pixels (a decompression bomb).
        let mut bomb = Vec::new();
        DynamicImage::ImageRgb8(smooth(8, 8))
            .write_to(&mut Cursor::new(&mut bomb), ImageFormat::Png)
            .unwrap();
        bomb[16..20].copy_from_slice(&60_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&60_000u32.to_be_bytes());
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let mut huge_jpeg = good.clone();
        // SOF0's height and width (the first FFC0 segment) set to 30000x30000.
        let sof = huge_jpeg
            .windows(2)
            .position(|w| w == [0xff, 0xc0])
            .unwrap();
        huge_jpeg[sof + 5..sof + 9].copy_from_slice(&[0x75, 0x30, 0x75, 0x30]);
        type Expect = fn(&PreviewError) -> bool;
        let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
            ("empty", vec![], |e| *e == PreviewError::NotAnImage),
            ("text", b"hello, not a picture".to_vec(), |e| {
                *e == PreviewError::NotAnImage
            }),
            ("pdf", b"%PDF-1.7\n...".to_vec(), |e| {
                *e == PreviewError::NotAnImage
            }),
            ("truncated", good[..good.len() / 3].to_vec(), |e| {
                matches!(e, PreviewError::Decode { .. })
            }),
            ("header only", good[..20].to_vec(), |e| {
                matches!(e, PreviewError::Decode { .. })
            }),
            ("png bomb", bomb, |e| {
                matches!(e, PreviewError::TooLarge { .. })
            }),
            ("jpeg bomb", huge_jpeg, |e| {
                matches!(e, PreviewError::TooLarge { .. })
            }),
        ];
        let limits = Limits {
            max_side: 20_000,
            max_pixels: 50_000_000,
            max_alloc: 256 * 1024 * 1024,
        };
        for (label, bytes, ok) in cases {
            match make(&bytes, &limits) {
                Err(e) => {
                    assert!(ok(&e), "{label}: {e:?}");
                    assert!(!e.to_string().is_empty());
                }
                Ok(p) => panic!("{label}: made a {}x{} preview", p.width, p.height),
            }
        }
    }
}
