//! The md5 of a file, streamed, as `md5sum` prints it.

use md5::{Digest, Md5};
use std::io::{self, Read};
use std::path::Path;

/// Hex md5 of the file at `path`, read in 64 KiB blocks.
pub fn md5_hex(path: &Path) -> io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let digest = hasher.finalize();
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            super::md5_hex(&p).unwrap(),
            "900150983cd24fb0d6963f7d28e17f72"
        );
    }
}
