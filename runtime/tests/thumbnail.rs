//! The slide's thumbnail and the heatmap drawn over it (`runtime slide`'s heatmap.png), pixel by
//! pixel: where each tile lands, the tint and outline of tissue tiles, and the colour scale.

use image::{Rgb, RgbImage};
use runtime::heatmap::colour;
use runtime::slide::grid::Grid;
use runtime::slide::stream::Tile;
use runtime::slide::thumbnail::Thumbnail;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);

/// A grid of `cols` x `rows` tiles of 50 pixels.
fn grid(cols: u32, rows: u32) -> Grid {
    Grid {
        width: u64::from(cols) * 50,
        height: u64::from(rows) * 50,
        tile: 50.0,
        cols,
        rows,
        level: 0,
        downsample: 1.0,
        read_side: 50,
        side: 50,
        mpp: 0.5,
    }
}

/// Each tile's own plain colour.
fn shade(col: u32, row: u32) -> Rgb<u8> {
    Rgb([(col * 4) as u8, (row * 40) as u8, 100])
}

/// A thumbnail of `grid` at most `max_side` wide with every tile put in, each its own colour.
fn filled(grid: &Grid, max_side: u32) -> Thumbnail {
    let mut t = Thumbnail::new(grid, max_side);
    for row in 0..grid.rows {
        for col in 0..grid.cols {
            let small = t.cell_of(&RgbImage::from_pixel(50, 50, shade(col, row)));
            t.put(col, row, &small);
        }
    }
    t
}

/// The heatmap's tint: the probability's colour at 55% over the picture.
fn tinted(under: Rgb<u8>, p: f32) -> Rgb<u8> {
    const ALPHA: f32 = 0.55;
    let over = colour(p);
    Rgb(std::array::from_fn(|k| {
        (f32::from(under[k]) * (1.0 - ALPHA) + f32::from(over[k]) * ALPHA).round() as u8
    }))
}

/// A tile takes the longest side over the larger count of tiles, at least 1 pixel and at most
/// its own side; each tile shrunk to its cell lands at its column and row.
#[test]
fn tiles_are_shrunk_to_a_cell_and_put_in_place() {
    let t = filled(&grid(60, 5), 240);
    assert_eq!((t.cell, t.img.dimensions()), (4, (240, 20)));
    for (x, y, px) in t.img.enumerate_pixels() {
        assert_eq!(*px, shade(x / 4, y / 4), "pixel {x}, {y}");
    }
    // More rows than columns: the rows decide; the cell is never larger than a tile.
    let tall = Thumbnail::new(&grid(3, 7), 2048);
    assert_eq!((tall.cell, tall.img.dimensions()), (50, (150, 350)));
    assert!(
        tall.img.pixels().all(|p| *p == WHITE),
        "a new thumbnail is white"
    );
    assert_eq!(Thumbnail::new(&grid(3, 7), 140).cell, 20);
    // Too many tiles for the side: one pixel each, the picture larger than asked.
    let wide = Thumbnail::new(&grid(60, 5), 10);
    assert_eq!((wide.cell, wide.img.dimensions()), (1, (60, 5)));
}

/// The picture, then (past a white gap) the same with each tissue tile tinted by its probability
/// and the ones at or above the threshold outlined in black; the rest untouched.
#[test]
fn the_heatmap_tints_tissue_tiles_and_outlines_predicted_idc() {
    let thumb = filled(&grid(60, 5), 240);
    let tiles = [(2, 1, 0.1), (5, 3, 0.75), (59, 4, 0.9)].map(|(col, row, prob)| Tile {
        col,
        row,
        tissue: 1.0,
        prob,
    });
    let threshold = 0.75; // the second tile's probability: it counts as IDC
    let out = thumb.heatmap(&tiles, threshold, "slide");
    // 2 x 240 + a 16-pixel gap wide; under the picture, a legend 5 x 12 pixels high.
    assert_eq!(out.dimensions(), (496, 80));
    let (w, h, gap) = (240, 20, 16);
    for y in 0..h {
        for x in 0..w {
            let under = *thumb.img.get_pixel(x, y);
            assert_eq!(*out.get_pixel(x, y), under, "left picture at {x}, {y}");
            let (col, row, dx, dy) = (x / 4, y / 4, x % 4, y % 4);
            let edge = dx == 0 || dy == 0 || dx == 3 || dy == 3;
            let want = match tiles.iter().find(|t| (t.col, t.row) == (col, row)) {
                Some(t) if f64::from(t.prob) >= threshold && edge => BLACK,
                Some(t) => tinted(under, t.prob),
                None => under,
            };
            assert_eq!(*out.get_pixel(w + gap + x, y), want, "heatmap at {x}, {y}");
        }
        for x in w..w + gap {
            assert_eq!(*out.get_pixel(x, y), WHITE, "gap at {x}, {y}");
        }
    }
    // The scale: 200 pixels from x = 10, 12 high, 3 x 12 under the picture; the threshold's
    // tick (round(0.75 x 199) = 149 pixels in) one pixel wide and 3 pixels longer each way.
    let (y0, tick) = (h + 36, 10 + 149);
    for y in y0..y0 + 12 {
        for x in 0..200 {
            let want = if 10 + x == tick {
                BLACK
            } else {
                colour(x as f32 / 199.0)
            };
            assert_eq!(*out.get_pixel(10 + x, y), want, "scale at {x}, {y}");
        }
        assert_eq!(*out.get_pixel(210, y), WHITE, "past the scale at {y}");
    }
    for y in [y0 - 3, y0 + 14] {
        assert_eq!(*out.get_pixel(tick, y), BLACK, "tick at {y}");
    }
    for (x, y) in [(tick - 1, y0 + 14), (tick + 1, y0 + 14), (tick, y0 + 15)] {
        assert_eq!(*out.get_pixel(x, y), WHITE, "beside the tick at {x}, {y}");
    }
    assert!(
        (y0 + 15..80).all(|y| (0..496).all(|x| *out.get_pixel(x, y) == WHITE)),
        "nothing under the scale"
    );
    // The title and the scale's words in the band between the picture and the scale, when
    // there is a font to draw them with.
    let font = evaluation::plot::draw_text(&mut RgbImage::new(8, 8), 0, 0, 8, &["x"]).unwrap();
    let words = (h..y0 - 3).any(|y| (0..496).any(|x| out.get_pixel(x, y)[0] < 128));
    assert_eq!(words, font, "words drawn (a font was found: {font})");
}

/// Cells under 4 pixels are too small for an outline: a predicted IDC tile is only tinted; a
/// narrow picture still gets a 360-pixel-wide legend.
#[test]
fn small_cells_are_tinted_without_an_outline() {
    let thumb = filled(&grid(60, 5), 120);
    assert_eq!(thumb.cell, 2);
    let tile = Tile {
        col: 7,
        row: 2,
        tissue: 1.0,
        prob: 0.9,
    };
    let out = thumb.heatmap(&[tile], 0.5, "slide");
    assert_eq!(out.dimensions(), (360, 10 + 60));
    for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
        let (x, y) = (14 + dx, 4 + dy);
        let want = tinted(*thumb.img.get_pixel(x, y), 0.9);
        assert_eq!(*out.get_pixel(120 + 16 + x, y), want, "at {x}, {y}");
    }
}

/// A picture over 800 pixels wide gets a scale a quarter of its width (under that, 200 pixels);
/// over 1,600 the legend's text is larger and the tick wider.
#[test]
fn the_scale_grows_with_a_wide_picture() {
    let thumb = filled(&grid(60, 5), 840);
    let out = thumb.heatmap(&[], 0.5, "slide");
    // 2 x 840 + 16 = 1,696 wide: text 16 pixels high, a legend of 5 x 16 under the 70-pixel
    // picture, a 424-pixel scale from x = 10 starting 3 x 16 under the picture.
    assert_eq!(out.dimensions(), (1696, 70 + 80));
    let y0 = 70 + 48;
    assert_eq!(*out.get_pixel(10 + 423, y0 + 8), colour(1.0));
    assert_eq!(*out.get_pixel(10 + 424, y0 + 8), WHITE);
    // The tick at round(0.5 x 423) = 212 pixels in, 16 / 8 = 2 pixels wide, under the scale.
    let y = y0 + 16 + 2;
    for (x, want) in [(221, WHITE), (222, BLACK), (223, BLACK), (224, WHITE)] {
        assert_eq!(*out.get_pixel(x, y), want, "tick at {x}");
    }
}
