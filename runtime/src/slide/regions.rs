//! The predicted IDC regions as polygons: the positive tiles merged, each 4-connected group one
//! polygon (its outline and its holes) on the tile grid's corners, for GeoJSON.
//!
//! Each tile contributes its sides that border no positive tile, directed clockwise on screen
//! (x right, y down); the sides join into closed rings. Tiles touching only at a corner are
//! separate regions; when they belong to one region all the same (joined the long way round),
//! the ring at that corner turns left, across the diagonal, so that the background cells there
//! fall on either side of the loop and every ring stays simple (a hole may touch its outline at
//! that corner, as GeoJSON allows). An outline's shoelace area is positive (counter-clockwise in
//! the plain x, y sense RFC 7946 uses), a hole's negative.

use std::collections::{HashMap, HashSet, VecDeque};

/// A grid corner (column, row of the tile whose top-left it is).
pub type Corner = (i64, i64);

/// One region: its outline and holes as closed rings of grid corners (first corner repeated
/// last), and how many tiles it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub outline: Vec<Corner>,
    pub holes: Vec<Vec<Corner>>,
    pub tiles: usize,
}

/// The regions of `cells` (positive tiles by column, row), largest first, then by position.
pub fn regions(cells: &HashSet<(u32, u32)>) -> Vec<Region> {
    let mut seen = HashSet::new();
    let mut sorted: Vec<_> = cells.iter().copied().collect();
    sorted.sort_by_key(|&(c, r)| (r, c));
    let mut out = Vec::new();
    for start in sorted {
        if !seen.insert(start) {
            continue;
        }
        let mut group = vec![start];
        let mut queue = VecDeque::from([start]);
        while let Some((c, r)) = queue.pop_front() {
            for n in neighbours(c, r) {
                if cells.contains(&n) && seen.insert(n) {
                    group.push(n);
                    queue.push_back(n);
                }
            }
        }
        out.push(region(&group, cells));
    }
    out.sort_by(|a, b| {
        b.tiles
            .cmp(&a.tiles)
            .then(a.outline[0].1.cmp(&b.outline[0].1))
            .then(a.outline[0].0.cmp(&b.outline[0].0))
    });
    out
}

fn neighbours(c: u32, r: u32) -> impl Iterator<Item = (u32, u32)> {
    [
        (c.checked_sub(1), Some(r)),
        (c.checked_add(1), Some(r)),
        (Some(c), r.checked_sub(1)),
        (Some(c), r.checked_add(1)),
    ]
    .into_iter()
    .filter_map(|(c, r)| Some((c?, r?)))
}

/// The rings of one 4-connected group.
fn region(group: &[(u32, u32)], cells: &HashSet<(u32, u32)>) -> Region {
    // Directed sides, by their start corner.
    let mut from: HashMap<Corner, Vec<Corner>> = HashMap::new();
    for &(c, r) in group {
        let has = |dc: i64, dr: i64| {
            let (nc, nr) = (i64::from(c) + dc, i64::from(r) + dr);
            nc >= 0 && nr >= 0 && cells.contains(&(nc as u32, nr as u32))
        };
        let (x, y) = (i64::from(c), i64::from(r));
        let (tl, tr, br, bl) = ((x, y), (x + 1, y), (x + 1, y + 1), (x, y + 1));
        for (dc, dr, a, b) in [
            (0, -1, tl, tr),
            (1, 0, tr, br),
            (0, 1, br, bl),
            (-1, 0, bl, tl),
        ] {
            if !has(dc, dr) {
                from.entry(a).or_default().push(b);
            }
        }
    }
    let mut starts: Vec<Corner> = from.keys().copied().collect();
    starts.sort_by_key(|&(x, y)| (y, x));
    let mut rings = Vec::new();
    for s in starts {
        while from.get(&s).is_some_and(|v| !v.is_empty()) {
            rings.push(ring(s, &mut from));
        }
    }
    // One outline per 4-connected group (the largest ring, positive); the others are holes.
    rings.sort_by_key(|r| -area2(r));
    let outline = rings.remove(0);
    Region {
        outline,
        holes: rings,
        tiles: group.len(),
    }
}

/// Follows sides from `start` back to it, using them up; at a corner with two ways on, takes
/// the left turn (see the module's notes). Corners where the direction goes on are dropped;
/// the start is never one: `region` starts each ring at its first corner in row, column order
/// (those before have no sides left), where a ring of grid sides turns.
fn ring(start: Corner, from: &mut HashMap<Corner, Vec<Corner>>) -> Vec<Corner> {
    let mut path = vec![start];
    let mut at = start;
    let mut dir: Option<Corner> = None;
    loop {
        let next = from
            .get_mut(&at)
            .expect("every side ends where another starts");
        let k = match dir {
            Some((dx, dy)) if next.len() > 1 => {
                let left = (at.0 + dy, at.1 - dx);
                next.iter().position(|&n| n == left).unwrap_or(0)
            }
            _ => 0,
        };
        let to = next.swap_remove(k);
        let d = (to.0 - at.0, to.1 - at.1);
        if dir == Some(d) {
            path.pop(); // a straight run: the middle corner adds nothing
        }
        path.push(to);
        dir = Some(d);
        at = to;
        if at == start {
            break;
        }
    }
    path
}

/// Twice the shoelace area of a closed ring (positive: counter-clockwise in x, y).
pub fn area2(ring: &[Corner]) -> i64 {
    ring.windows(2)
        .map(|w| w[0].0 * w[1].1 - w[1].0 * w[0].1)
        .sum()
}

/// Whether (`x`, `y`) is inside the closed `ring` (even-odd rule; not for points on it).
pub fn contains(ring: &[(f64, f64)], x: f64, y: f64) -> bool {
    let mut inside = false;
    for w in ring.windows(2) {
        let ((x1, y1), (x2, y2)) = (w[0], w[1]);
        if (y1 > y) != (y2 > y) && x < x1 + (y - y1) * (x2 - x1) / (y2 - y1) {
            inside = !inside;
        }
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(cells: &[(u32, u32)]) -> HashSet<(u32, u32)> {
        cells.iter().copied().collect()
    }

    fn covers(regions: &[Region], c: u32, r: u32) -> bool {
        let f = |ring: &Vec<Corner>| -> Vec<(f64, f64)> {
            ring.iter().map(|&(x, y)| (x as f64, y as f64)).collect()
        };
        let (x, y) = (f64::from(c) + 0.5, f64::from(r) + 0.5);
        regions.iter().any(|g| {
            contains(&f(&g.outline), x, y) && !g.holes.iter().any(|h| contains(&f(h), x, y))
        })
    }

    #[test]
    fn a_ring_of_tiles_is_one_region_with_a_hole() {
        let mut cells = HashSet::new();
        for c in 0..3 {
            for r in 0..3 {
                if (c, r) != (1, 1) {
                    cells.insert((c, r));
                }
            }
        }
        let g = regions(&cells);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].outline, vec![(0, 0), (3, 0), (3, 3), (0, 3), (0, 0)]);
        assert_eq!(g[0].holes.len(), 1);
        assert_eq!(area2(&g[0].holes[0]), -2);
        assert_eq!(g[0].tiles, 8);
    }

    #[test]
    fn a_region_touching_itself_at_a_corner_has_simple_rings() {
        // (1, 1) and (2, 2) touch at a corner and are joined round the top and right: the
        // background cell (2, 1) is a hole touching the outline at that corner.
        let g = regions(&set(&[
            (1, 1),
            (1, 0),
            (2, 0),
            (3, 0),
            (3, 1),
            (3, 2),
            (2, 2),
        ]));
        assert_eq!(g.len(), 1);
        assert_eq!(
            g[0].holes,
            vec![vec![(2, 1), (2, 2), (3, 2), (3, 1), (2, 1)]]
        );
        assert!(g[0].outline.iter().filter(|&&c| c == (2, 2)).count() == 1);
    }

    #[test]
    fn tiles_touching_at_a_corner_are_two_regions() {
        let g = regions(&set(&[(0, 0), (1, 1)]));
        assert_eq!(g.len(), 2);
        assert!(
            g.iter()
                .all(|g| g.holes.is_empty() && area2(&g.outline) == 2)
        );
    }

    /// `contains` (the tests' point-in-polygon) against each shape's own inequalities, at points
    /// off the rings: slanted sides, rows level with a vertex, a notch the ray crosses twice.
    #[test]
    fn contains_follows_the_even_odd_rule() {
        type Inside = fn(f64, f64) -> bool;
        let shapes: [(&[(f64, f64)], Inside); 3] = [
            (&[(1.0, 1.0), (5.0, 1.0), (1.0, 5.0), (1.0, 1.0)], |x, y| {
                x > 1.0 && y > 1.0 && x + y < 6.0
            }),
            (
                &[(2.0, 0.0), (4.0, 2.0), (2.0, 4.0), (0.0, 2.0), (2.0, 0.0)],
                |x, y| (x - 2.0).abs() + (y - 2.0).abs() < 2.0,
            ),
            (
                &[
                    (0.0, 0.0),
                    (3.0, 0.0),
                    (3.0, 3.0),
                    (2.0, 3.0),
                    (2.0, 1.0),
                    (1.0, 1.0),
                    (1.0, 3.0),
                    (0.0, 3.0),
                    (0.0, 0.0),
                ],
                |x, y| {
                    (0.0..3.0).contains(&x)
                        && (0.0..3.0).contains(&y)
                        && !(x > 1.0 && x < 2.0 && y > 1.0)
                },
            ),
        ];
        for (ring, inside) in shapes {
            // Never on a ring: x in quarters and y in fifths, each off the grid lines (and
            // so off every side, slanted ones too); the rows y = 2 and 5 meet only vertices.
            let ys: Vec<f64> = (-5..35)
                .map(|j| f64::from(j) / 5.0 + 0.1)
                .chain([2.0, 5.0])
                .collect();
            for i in -4..28 {
                let x = f64::from(i) / 4.0 + 0.125;
                for &y in &ys {
                    assert_eq!(contains(ring, x, y), inside(x, y), "{x}, {y} in {ring:?}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn the_regions_cover_exactly_the_cells(
            cells in proptest::collection::hash_set((0u32..7, 0u32..7), 0..40),
        ) {
            let g = regions(&cells);
            prop_assert_eq!(g.iter().map(|g| g.tiles).sum::<usize>(), cells.len());
            let area: i64 = g.iter().map(|g| area2(&g.outline) + g.holes.iter().map(|h| area2(h)).sum::<i64>()).sum();
            prop_assert_eq!(area, 2 * cells.len() as i64);
            for c in 0..8 {
                for r in 0..8 {
                    prop_assert_eq!(covers(&g, c, r), cells.contains(&(c, r)), "cell {} {}", c, r);
                }
            }
            for g in &g {
                prop_assert!(area2(&g.outline) > 0);
                prop_assert!(g.holes.iter().all(|h| area2(h) < 0));
                for ring in std::iter::once(&g.outline).chain(&g.holes) {
                    prop_assert_eq!(ring.first(), ring.last());
                    // Simple: no corner twice but the closing one.
                    let mut seen = HashSet::new();
                    prop_assert!(ring[1..].iter().all(|c| seen.insert(*c)), "{:?}", ring);
                    // Every corner turns, the first too: a straight run is one side.
                    let n = ring.len() - 1;
                    let way = |a: Corner, b: Corner| ((b.0 - a.0).signum(), (b.1 - a.1).signum());
                    for i in 0..n {
                        let before = ring[(i + n - 1) % n];
                        prop_assert_ne!(way(before, ring[i]), way(ring[i], ring[i + 1]), "{:?}", ring);
                    }
                }
            }
        }
    }
}
