// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Write the seed corpus: `cargo run --manifest-path fuzz/Cargo.toml --example seeds`
//! (from the repository root) fills `fuzz/corpus/<target>/seed-<name>`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, seeds) in vnm_fuzz::seeds::all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            let path = dir.join(format!("seed-{name}"));
            std::fs::write(&path, &bytes)?;
            println!("{} ({} bytes)", path.display(), bytes.len());
        }
    }
    Ok(())
}
