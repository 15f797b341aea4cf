//! What `runtime slide` writes per slide, into one folder put in place whole: `tiles.csv` (a row
//! per tissue tile), `summary.json`, `heatmap.png` and `idc.geojson` (the predicted IDC regions
//! as QuPath annotations, in level-0 pixels).

use super::grid::Grid;
use super::regions::{Region, regions};
use super::stream::Tile;
use anyhow::{Context, Result, bail};
use common::Shown;
use common::fsutil::{replace_folder, temp_sibling};
use serde_json::json;
use std::collections::HashSet;
use std::path::Path;

pub const TILES_FILE: &str = "tiles.csv";
pub const SUMMARY_FILE: &str = "summary.json";
pub const HEATMAP_FILE: &str = "heatmap.png";
pub const REGIONS_FILE: &str = "idc.geojson";
/// Everything a slide's folder holds: an existing folder is replaced only when it holds nothing
/// else (an earlier result), never one with files of someone's own.
const FILES: [&str; 4] = [TILES_FILE, SUMMARY_FILE, HEATMAP_FILE, REGIONS_FILE];

/// The class name and colour QuPath shows the regions with.
const CLASS: &str = "IDC";
const CLASS_RGB: [u8; 3] = [200, 20, 30];

/// The tiles as CSV: grid place, level-0 top-left corner, tissue share, probability, prediction.
pub fn tiles_csv(grid: &Grid, tiles: &[Tile], threshold: f64) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "col",
        "row",
        "x",
        "y",
        "tissue",
        "probability",
        "prediction",
    ])?;
    for t in tiles {
        let (x, y) = grid.origin(t.col, t.row);
        let idc = f64::from(t.prob) >= threshold;
        w.write_record([
            t.col.to_string(),
            t.row.to_string(),
            x.to_string(),
            y.to_string(),
            format!("{:.4}", t.tissue),
            format!("{:.6}", t.prob),
            u8::from(idc).to_string(),
        ])?;
    }
    Ok(w.into_inner()?)
}

/// The positive tiles merged into regions, as a GeoJSON FeatureCollection of QuPath
/// annotations (one Polygon feature a region, with its holes).
pub fn regions_geojson(grid: &Grid, tiles: &[Tile], threshold: f64) -> Result<Vec<u8>> {
    let positive: HashSet<(u32, u32)> = tiles
        .iter()
        .filter(|t| f64::from(t.prob) >= threshold)
        .map(|t| (t.col, t.row))
        .collect();
    let ring = |r: &Vec<(i64, i64)>| -> Vec<[i64; 2]> {
        r.iter()
            .map(|&(c, r)| [grid.edge(c as u32), grid.edge(r as u32)])
            .collect()
    };
    let features: Vec<_> = regions(&positive)
        .iter()
        .enumerate()
        .map(
            |(
                i,
                Region {
                    outline,
                    holes,
                    tiles,
                },
            )| {
                let rings: Vec<_> = std::iter::once(outline).chain(holes).map(ring).collect();
                json!({
                    "type": "Feature",
                    "id": format!("idc-{}", i + 1),
                    "geometry": { "type": "Polygon", "coordinates": rings },
                    "properties": {
                        "objectType": "annotation",
                        "name": format!("IDC region {}", i + 1),
                        "classification": { "name": CLASS, "color": CLASS_RGB },
                        "tiles": tiles,
                        "area_mm2": *tiles as f64 * grid.tile_mm2(),
                    },
                })
            },
        )
        .collect();
    let doc = json!({ "type": "FeatureCollection", "features": features });
    Ok(serde_json::to_vec_pretty(&doc)?)
}

/// Refuses `dir` unless it is absent or a folder of an earlier result: one holding only what a
/// slide's folder holds (a link, a file, or a folder with anything else in it is someone's own,
/// and replacing it would delete it).
pub fn check_replaceable(dir: &Path) -> Result<()> {
    let fix = "move it, or choose another --out (a slide's results replace only an earlier result's folder)";
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.shown())),
        Ok(m) if !m.is_dir() => bail!(
            "{} exists and is not a folder `runtime slide` wrote: {fix}",
            dir.shown()
        ),
        Ok(_) => {}
    }
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.shown()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.shown()))?;
        let name = entry.file_name();
        // A result's files are files: a folder or a link under one of their names is not ours.
        let file = entry.file_type().is_ok_and(|t| t.is_file());
        if !file || !FILES.iter().any(|f| name == *f) {
            bail!(
                "{} holds {}, which `runtime slide` does not write: {fix}",
                dir.shown(),
                Path::new(&name).shown()
            );
        }
    }
    Ok(())
}

/// Writes `files` (name, bytes) as the folder `dir`, whole or not at all: into a temp sibling
/// first, then renamed into place (an older `dir` is replaced only once the new one is complete,
/// and only if it is an earlier result: `check_replaceable`).
pub fn write_folder(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    check_replaceable(dir)?;
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create folder {}", parent.shown()))?;
    let tmp = temp_sibling(dir, "tmp");
    let written = (|| -> Result<()> {
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp)?;
        for (name, bytes) in files {
            let path = tmp.join(name);
            std::fs::write(&path, bytes)?;
            std::fs::File::open(&path)?.sync_all()?;
        }
        replace_folder(&tmp, dir, "slide's results")
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", dir.shown()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that fails leaves the folder as it was, and an earlier run's leftover beside it
    /// (its `.old` sibling, here with the same process id) does not take its place.
    #[test]
    fn a_failed_write_leaves_the_folder_as_it_was() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("slide");
        std::fs::create_dir(&dir).unwrap();
        let stale = temp_sibling(&dir, "old");
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join(TILES_FILE), "stale").unwrap();
        // A file in a folder that does not exist cannot be written.
        let files = [(TILES_FILE, b"new".to_vec()), ("missing/x", vec![])];
        let err = write_folder(&dir, &files).unwrap_err();
        assert!(format!("{err:#}").contains("cannot write"), "{err:#}");
        assert!(dir.is_dir() && std::fs::read_dir(&dir).unwrap().next().is_none());
        assert!(!temp_sibling(&dir, "tmp").exists());
        assert_eq!(std::fs::read(stale.join(TILES_FILE)).unwrap(), b"stale");
    }

    /// An earlier result's folder is replaced; a folder with anything else in it, a file or a
    /// link in its place is someone's own, and is refused with what is in the way, untouched.
    #[test]
    fn only_an_earlier_results_folder_is_replaced() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("slide");
        let write = |bytes: &[u8]| write_folder(&dir, &[(TILES_FILE, bytes.to_vec())]);
        write(b"first").unwrap();
        std::fs::write(dir.join(SUMMARY_FILE), "{}").unwrap();
        write(b"second").unwrap();
        assert_eq!(std::fs::read(dir.join(TILES_FILE)).unwrap(), b"second");
        assert!(!dir.join(SUMMARY_FILE).exists());
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        let err = format!("{:#}", write(b"third").unwrap_err());
        assert!(
            err.contains("holds notes.txt, which `runtime slide` does not write"),
            "{err}"
        );
        assert!(err.contains("choose another --out"), "{err}");
        assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"mine");
        assert_eq!(std::fs::read(dir.join(TILES_FILE)).unwrap(), b"second");
        // A folder under a result file's name is not a result's file.
        std::fs::remove_file(dir.join("notes.txt")).unwrap();
        std::fs::remove_file(dir.join(TILES_FILE)).unwrap();
        std::fs::create_dir(dir.join(TILES_FILE)).unwrap();
        let err = format!("{:#}", write(b"third").unwrap_err());
        assert!(err.contains("holds tiles.csv, which"), "{err}");
        assert!(dir.join(TILES_FILE).is_dir());
        let file = root.path().join("file");
        std::fs::write(&file, "mine").unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        for path in [&file, &link] {
            let err = format!("{:#}", write_folder(path, &[]).unwrap_err());
            assert!(
                err.contains("is not a folder `runtime slide` wrote"),
                "{err}"
            );
        }
        assert_eq!(std::fs::read(&file).unwrap(), b"mine");
        assert!(link.join(TILES_FILE).is_dir());
    }

    /// `tiles.csv` predicts IDC for a tile at the threshold as well as above it (`>=`, as `runtime
    /// eval`), not below.
    #[test]
    fn a_tile_at_the_threshold_is_predicted_idc() {
        use crate::slide::{grid::Grid, stream::Tile};
        let grid = Grid {
            width: 1000,
            height: 100,
            tile: 100.0,
            cols: 10,
            rows: 1,
            level: 0,
            downsample: 1.0,
            read_side: 100,
            side: 50,
            mpp: 0.5,
        };
        let tile = |col, prob| Tile {
            col,
            row: 0,
            tissue: 1.0,
            prob,
        };
        let tiles = [tile(0, 0.25), tile(1, 0.5), tile(2, 0.75)];
        let csv = String::from_utf8(tiles_csv(&grid, &tiles, 0.5).unwrap()).unwrap();
        let predictions: Vec<&str> = csv
            .lines()
            .skip(1)
            .filter_map(|l| l.rsplit(',').next())
            .collect();
        assert_eq!(predictions, ["0", "1", "1"], "{csv}");
    }
}
