//! Planning an epoch: the seeded order of its batches over a split's shape groups, with no batch
//! of one image, and the seeds derived from a position in the job.

use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// A seed derived from the job's seed and a position (phase, epoch[, step]) by SplitMix64's mixing,
/// so neighbouring positions get unrelated streams and no generator state has to be saved.
pub fn derived_seed(seed: u64, position: &[u64]) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    position.iter().fold(mix(seed), |state, &part| mix(state ^ mix(part)))
}

/// One training batch: `len` images of shape group `group`, from `start` in that group's shuffled
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedBatch {
    /// Index of the shape group.
    pub group: usize,
    /// Offset into the group's shuffled order.
    pub start: i64,
    /// Images in the batch.
    pub len: i64,
}

/// One epoch's batches over shape groups of `sizes` images: each group's images are shuffled and
/// cut into batches ([`batch_bounds`]); with several groups the batches' order is shuffled too, so
/// shapes interleave through the epoch. Returns each group's shuffled order and the batches.
pub fn epoch_plan(sizes: &[i64], batch_size: i64, rng: &mut ChaCha8Rng) -> (Vec<Vec<i64>>, Vec<PlannedBatch>) {
    let mut orders = Vec::with_capacity(sizes.len());
    let mut batches = Vec::new();
    for (group, &n) in sizes.iter().enumerate() {
        let mut order: Vec<i64> = (0..n).collect();
        order.shuffle(rng);
        orders.push(order);
        batches.extend(batch_bounds(n, batch_size).into_iter().map(|(start, len)| PlannedBatch { group, start, len }));
    }
    if sizes.len() > 1 {
        batches.shuffle(rng);
    }
    (orders, batches)
}

/// `(start, len)` of each training batch. A trailing batch of one image is merged into the one
/// before: batch norm cannot take batch statistics of a single sample (its running variance
/// would become NaN). For the same reason a group of one image (a shape only one film of a
/// variable-size split has) gets no batch at all: [`lone_images`] counts them for the log.
pub fn batch_bounds(n: i64, batch_size: i64) -> Vec<(i64, i64)> {
    if n == 1 && batch_size > 1 {
        return Vec::new();
    }
    let mut bounds: Vec<(i64, i64)> = (0..n).step_by(batch_size as usize).map(|s| (s, batch_size.min(n - s))).collect();
    if bounds.len() > 1 && bounds.last().is_some_and(|&(_, len)| len == 1) {
        bounds.pop();
        bounds.last_mut().expect("more than one batch").1 += 1;
    }
    bounds
}

/// Images of `sizes` (shape groups) that no training batch holds: groups of one image.
pub fn lone_images(sizes: &[i64], batch_size: i64) -> i64 {
    sizes.iter().filter(|&&n| batch_bounds(n, batch_size).is_empty()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn batches_cover_every_image_once_and_never_hold_one_alone() {
        assert_eq!(batch_bounds(9, 4), [(0, 4), (4, 5)]);
        assert_eq!(batch_bounds(8, 4), [(0, 4), (4, 4)]);
        assert_eq!(batch_bounds(10, 4), [(0, 4), (4, 4), (8, 2)]);
        assert_eq!(batch_bounds(1, 4), [], "one image alone is no batch");
        assert_eq!(batch_bounds(3, 1), [(0, 1), (1, 2)], "batch_size 1 is what the spec asked for");
        assert_eq!(batch_bounds(5216, 20).len(), 261);
        assert_eq!(lone_images(&[7, 1, 3, 1], 4), 2);
        assert_eq!(lone_images(&[7, 3], 4), 0);
    }

    #[test]
    fn an_epoch_plan_covers_every_image_of_every_group_once() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (orders, batches) = epoch_plan(&[7, 3, 10], 4, &mut rng);
        let mut seen: Vec<Vec<bool>> = [7, 3, 10].iter().map(|&n| vec![false; n]).collect();
        for batch in &batches {
            assert!(batch.len >= 2, "{batch:?}");
            for &image in &orders[batch.group][batch.start as usize..(batch.start + batch.len) as usize] {
                assert!(!seen[batch.group][image as usize], "image seen twice");
                seen[batch.group][image as usize] = true;
            }
        }
        assert!(seen.iter().flatten().all(|&s| s), "every image seen");
        assert_eq!(batches.len(), 2 + 1 + 3);
        // Shapes interleave: the batch order is not simply group after group.
        let groups: Vec<usize> = batches.iter().map(|batch| batch.group).collect();
        let mut sorted = groups.clone();
        sorted.sort();
        let (_, again) = epoch_plan(&[7, 3, 10], 4, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(batches, again, "seeded");
        assert_ne!(groups, sorted, "{groups:?}");
    }
}
