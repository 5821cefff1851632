//! Image folders: `<root>/<split>/<class>/*.{png,jpg,jpeg}` (or
//! `<root>/<class>/...` when there is no split sub-folder), classes in sorted
//! order, every image resized to the space's image size.

use super::{Dataset, Split};
use crate::error::{Error, Result};
use image::imageops::FilterType;
use std::path::{Path, PathBuf};

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

pub fn load_split(root: &Path, split: Split, size: usize, channels: usize) -> Result<Dataset> {
    let name = match split {
        Split::Train => "train",
        Split::Test => "test",
    };
    let dir = if root.join(name).is_dir() {
        root.join(name)
    } else {
        root.to_path_buf()
    };
    let classes: Vec<PathBuf> = sorted_entries(&dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    if classes.is_empty() {
        return Err(Error::Data {
            source_name: dir.display().to_string(),
            message: "no class sub-folders".into(),
        });
    }
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (label, class_dir) in classes.iter().enumerate() {
        for file in sorted_entries(class_dir)? {
            let ext = file
                .extension()
                .and_then(|e| e.to_str())
                .map(|e| e.to_ascii_lowercase());
            if !matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
                continue;
            }
            let img = image::open(&file).map_err(|e| Error::Data {
                source_name: file.display().to_string(),
                message: format!("cannot decode image: {e}"),
            })?;
            let img = img.resize_exact(size as u32, size as u32, FilterType::Triangle);
            match channels {
                1 => images.extend_from_slice(img.to_luma8().as_raw()),
                3 => {
                    // HWC to CHW planes.
                    let rgb = img.to_rgb8();
                    let raw = rgb.as_raw();
                    for c in 0..3 {
                        images.extend(raw.iter().skip(c).step_by(3));
                    }
                }
                c => {
                    return Err(Error::Data {
                        source_name: file.display().to_string(),
                        message: format!("{c} channels: image folders give 1 (grey) or 3 (RGB)"),
                    })
                }
            }
            labels.push(label as u32);
        }
    }
    Ok(Dataset {
        images,
        labels,
        channels,
        height: size,
        width: size,
        num_classes: classes.len(),
        source: dir.display().to_string(),
    })
}
