//! Fetches the MediaPipe selfie segmentation files that the page's background blur runs on,
//! so that confab serves them itself (meetings on a LAN without internet, no CDN).
//!
//! The files come from the npm package `@mediapipe/selfie_segmentation` at a pinned version:
//! `npm pack` fetches its tarball (or takes it from npm's cache), the tarball's sha512 must
//! match the pinned `dist.integrity` of that version, and only the files the page needs are
//! unpacked into `OUT_DIR` and embedded (`src/http/mediapipe.rs` includes what this writes).
//!
//! Without npm, offline with an empty npm cache, or with `CONFAB_BLUR_ASSETS=off`, the build
//! still succeeds: blur is then disabled and the page says why. `CONFAB_MEDIAPIPE_TGZ=<file>`
//! uses a tarball fetched elsewhere (checked against the same hash). A tarball whose hash
//! does not match fails the build: that is a changed package, not a missing one.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use sha2::{Digest, Sha512};

const PACKAGE: &str = "@mediapipe/selfie_segmentation";
const VERSION: &str = "0.1.1675465747";
/// `npm view @mediapipe/selfie_segmentation@0.1.1675465747 dist.integrity`
const INTEGRITY: &str =
    "sha512-IxYxNhwE5VwOm52L1yoFWYLP7q9Pd+NJjzOC5tlepfvEGaY3o9hslhUrx9BgseqdfZtKSDtd/4NfCSMjNzQalA==";
/// What the page loads: the solution's script, the SIMD build of its WASM and its loader
/// (every current browser has WASM SIMD; without it blur is reported unavailable), the
/// graph, and the landscape model (256x144, made for 16:9 video). The `.data` file is empty
/// but the loader asks for it.
const FILES: [&str; 6] = [
    "selfie_segmentation.js",
    "selfie_segmentation_solution_simd_wasm_bin.js",
    "selfie_segmentation_solution_simd_wasm_bin.wasm",
    "selfie_segmentation_solution_simd_wasm_bin.data",
    "selfie_segmentation.binarypb",
    "selfie_segmentation_landscape.tflite",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CONFAB_BLUR_ASSETS");
    println!("cargo:rerun-if-env-changed=CONFAB_MEDIAPIPE_TGZ");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let generated = match fetch(&out) {
        Ok(files) => code(None, &files),
        Err(why) => {
            println!("cargo:warning=background blur disabled: {why}");
            code(Some(&why), &[])
        }
    };
    std::fs::write(out.join("mediapipe_assets.rs"), generated)
        .expect("OUT_DIR is writable during a build");
}

/// The unpacked files (name, path), or why there are none.
fn fetch(out: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    if std::env::var("CONFAB_BLUR_ASSETS").is_ok_and(|v| v == "off") {
        return Err("this server was built with CONFAB_BLUR_ASSETS=off".into());
    }
    let tgz = match std::env::var_os("CONFAB_MEDIAPIPE_TGZ") {
        Some(p) => PathBuf::from(p),
        None => npm_pack(out)?,
    };
    let bytes = std::fs::read(&tgz).map_err(|e| format!("reading {}: {e}", tgz.display()))?;
    let got = format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha512::digest(&bytes))
    );
    if got != INTEGRITY {
        // Not a reason to build without blur: someone changed the package under this version.
        panic!(
            "{} has integrity {got}, but {PACKAGE}@{VERSION} is pinned to {INTEGRITY}; \
             refusing to embed it",
            tgz.display()
        );
    }
    let dir = out.join("mediapipe");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut found = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| format!("reading {}: {e}", tgz.display()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("reading {}: {e}", tgz.display()))?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        let Some(name) = path
            .strip_prefix("package")
            .ok()
            .and_then(|p| p.to_str())
            .filter(|n| FILES.contains(n))
            .map(str::to_owned)
        else {
            continue;
        };
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| format!("unpacking {name}: {e}"))?;
        let dest = dir.join(&name);
        std::fs::write(&dest, data).map_err(|e| format!("writing {}: {e}", dest.display()))?;
        found.push((name, dest));
    }
    if found.len() != FILES.len() {
        return Err(format!("{} lacks some of {FILES:?}", tgz.display()));
    }
    found.sort();
    Ok(found)
}

/// `npm pack` into `out` (from npm's cache when it has the tarball).
fn npm_pack(out: &Path) -> Result<PathBuf, String> {
    let spec = format!("{PACKAGE}@{VERSION}");
    let run = Command::new("npm")
        .args([
            "pack",
            &spec,
            "--silent",
            "--prefer-offline",
            "--fetch-retries=1",
        ])
        .arg("--pack-destination")
        .arg(out)
        .output()
        .map_err(|e| format!("npm is not available ({e}); install it and rebuild to get blur"))?;
    if !run.status.success() {
        let err = String::from_utf8_lossy(&run.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(format!(
            "`npm pack {spec}` failed ({last}); build once with network access (npm keeps it \
             in its cache) or set CONFAB_MEDIAPIPE_TGZ"
        ));
    }
    let name = String::from_utf8_lossy(&run.stdout).trim().to_owned();
    let tgz = out.join(name.lines().last().unwrap_or_default());
    if tgz.is_file() {
        Ok(tgz)
    } else {
        Err(format!(
            "`npm pack {spec}` wrote no tarball at {}",
            tgz.display()
        ))
    }
}

fn code(unavailable: Option<&str>, files: &[(String, PathBuf)]) -> String {
    let mut s = format!(
        "/// The npm package the files come from.\npub const PACKAGE: &str = {PACKAGE:?};\n\
         pub const VERSION: &str = {VERSION:?};\npub const INTEGRITY: &str = {INTEGRITY:?};\n\
         /// Why the files are not embedded, if they are not.\n\
         pub const UNAVAILABLE: Option<&str> = {unavailable:?};\n\
         pub static FILES: &[(&str, &[u8])] = &[\n"
    );
    for (name, path) in files {
        s.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    s.push_str("];\n");
    s
}
