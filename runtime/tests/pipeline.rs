//! The inference pipeline called as a library: what `count` and `list` find under a folder, the
//! batch memory check, and how `stream` batches, numbers and counts what it is given.

mod common;

use datasets::Problem;
use image::{Rgb, RgbImage};
use indicatif::ProgressBar;
use runtime::pipeline::{Found, Item, MAX_BATCH_BYTES, Padded, Pipeline, count, list};
use std::path::{Path, PathBuf};

/// A 50x50 patch at `path` (its folders made): gradients, so that pixels moved by even one place
/// in a batch make another image.
fn patch(path: &Path, shade: u8) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let ramp = |v: u32| (v * 5) as u8; // 0..=245 over the 50 pixels
    RgbImage::from_fn(50, 50, |x, y| {
        Rgb([shade.wrapping_add(ramp(x)), ramp(y), 255 - ramp(x)])
    })
    .save(path)
    .unwrap();
    path.to_path_buf()
}

/// An image with nothing known from its path.
fn unnamed(path: PathBuf) -> Item {
    Item {
        path,
        label: None,
        name: None,
    }
}

fn an_image(path: PathBuf) -> Found {
    Found::Image(unnamed(path))
}

/// `count` (eval's progress bar) counts the files with an image extension; `list` sorts images,
/// other files and Kaggle's copies; with no image both say how many other files there were.
#[test]
fn count_and_list_see_images_other_files_and_kaggle_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("set");
    patch(&root.join("8863/0/8863_idx5_x51_y1_class0.png"), 10);
    patch(&root.join("8863/0/8863_idx5_x101_y1_class0.png"), 20);
    // Kaggle's second copy of the first patch: not classified twice.
    let copy = "IDC_regular_ps50_idx5/8863/0/8863_idx5_x51_y1_class0.png";
    patch(&root.join(copy), 10);
    std::fs::write(root.join("notes.txt"), "not a patch").unwrap();
    assert_eq!(count(&root).unwrap(), 3, "three files named as images");
    let listed = list(&root).unwrap();
    assert_eq!(
        (
            listed.images.len(),
            listed.problems.len(),
            listed.kaggle_copies
        ),
        (2, 1, 1)
    );
    assert!(listed.problems[0].path.ends_with("notes.txt"));

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for name in ["a.txt", "b.csv"] {
        std::fs::write(empty.join(name), "x").unwrap();
    }
    for err in [count(&empty).unwrap_err(), list(&empty).unwrap_err()] {
        let err = err.to_string();
        assert!(
            err.contains("no images under") && err.contains("(2 other files)"),
            "{err}"
        );
    }
}

/// A batch whose decoded images would pass `MAX_BATCH_BYTES` is refused before anything is
/// allocated, naming the flag; one under it passes.
#[test]
fn a_batch_over_the_memory_limit_is_refused() {
    let pre = datasets::preprocess::Preprocess::default(); // 48x48: 27,648 bytes an image
    let pipeline = |batch_size| Pipeline {
        batch_size,
        decode_threads: 1,
    };
    let per_image = pre.len() * 4;
    assert!(
        pipeline(MAX_BATCH_BYTES / per_image)
            .check_memory(&pre)
            .is_ok()
    );
    let err = pipeline(MAX_BATCH_BYTES / per_image + 1)
        .check_memory(&pre)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lower --batch-size"), "{err}");
}

/// `stream` takes `batch_size` images at a time (a file that fails to decode among them), numbers
/// each image by its place among the images taken, moves the progress bar a batch at a time by
/// everything the batch took (problems and Kaggle copies too), and gives each image the
/// probability it gets without the corrupt file.
#[test]
fn stream_batches_numbers_and_counts_what_it_takes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut model = common::cpu_model(&common::model(tmp.path()), 1);
    let corrupt = tmp.path().join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG not really").unwrap();
    let mut paths: Vec<PathBuf> = (0..7u8)
        .map(|k| patch(&tmp.path().join(format!("p{k}.png")), k * 36))
        .collect();
    paths[1] = corrupt.clone();
    // The images, with a problem and a Kaggle copy (counted, not numbered) after the third.
    let mut found: Vec<Found> = paths.iter().cloned().map(an_image).collect();
    found.insert(3, Found::KaggleCopy);
    found.insert(3, Found::Problem(Problem::new(Path::new("x.txt"), "no")));

    let pipeline = Pipeline {
        batch_size: 3,
        decode_threads: 2,
    };
    let progress = ProgressBar::hidden();
    let mut seen = Vec::new();
    let streamed = pipeline
        .stream(&mut model, found.into_iter(), &progress, |i, item, p| {
            seen.push((i, item.path.clone(), p, progress.position()));
            Ok(())
        })
        .unwrap();

    // Batches: images 0-2 (1 fails); the problem, the copy and images 3-5; image 6.
    let numbered: Vec<(usize, u64)> = seen.iter().map(|s| (s.0, s.3)).collect();
    assert_eq!(
        numbered,
        [(0, 0), (2, 0), (3, 3), (4, 3), (5, 3), (6, 8)],
        "(image number, progress when it came back)"
    );
    for (i, path, _, _) in &seen {
        assert_eq!(path, &paths[*i], "image {i}");
    }
    assert_eq!(progress.position(), 9, "7 images, a problem and a copy");
    assert_eq!((streamed.problems.len(), streamed.kaggle_copies), (2, 1));
    assert_eq!(streamed.problems[0].path, corrupt);

    // A batch in which every file failed: nothing comes back for it, the next image keeps its
    // number.
    let alone = Pipeline {
        batch_size: 1,
        decode_threads: 1,
    };
    let first_fails = [corrupt.clone(), paths[0].clone()].map(an_image);
    let mut results = 0;
    alone
        .stream(
            &mut model,
            first_fails.into_iter(),
            &ProgressBar::hidden(),
            |i, _, _| {
                results += 1;
                assert_eq!(i, 1);
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(results, 1);

    // Each image as if the corrupt file were not there: a failed file's slot in the batch is
    // closed, not left to shift or blank the images after it.
    let items: Vec<Item> = paths
        .iter()
        .filter(|path| **path != corrupt)
        .cloned()
        .map(unnamed)
        .collect();
    let whole = Pipeline {
        batch_size: 16,
        decode_threads: 1,
    }
    .run(&mut model, &items, &ProgressBar::hidden())
    .unwrap();
    for (k, (i, _, p, _)) in seen.iter().enumerate() {
        let alone = whole.probs[k].unwrap();
        assert!((p - alone).abs() < 1e-5, "image {i}: {p} vs {alone}");
    }
}

/// A batch shorter than the full size is padded to it once a full one has run (ONNX Runtime then
/// keeps one memory plan), not before; the padding's rows are not returned.
#[test]
fn short_batches_are_padded_only_after_a_full_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut model = common::cpu_model(&common::model(tmp.path()), 1);
    let len = model.preprocess.len();
    let mut padded = Padded::new(4);
    // (images in the batch, rows the model was given)
    for (n, rows) in [(2, 2), (3, 3), (4, 4), (3, 4), (1, 4)] {
        let mut images: Vec<f32> = (0..n * len).map(|v| (v % 97) as f32 / 97.0).collect();
        let p = padded.predict(&mut model, &mut images, n).unwrap();
        assert_eq!((p.len(), images.len()), (n, rows * len), "a batch of {n}");
    }
}
