//! The input a backbone's pretrained weights expect, from the uint8 pixels every split is kept in.

use tch::{Device, Kind, Tensor};
use trainq::domain::backbone::Backbone;

/// Turns uint8 batches into the float input a backbone's pretrained weights expect.
pub struct Normaliser {
    /// `1 / (255 · std)` per channel.
    scale: Tensor,
    /// `−mean / std` per channel.
    shift: Tensor,
    device: Device,
}

impl Normaliser {
    /// The backbone's input statistics, folded into one scale and shift per channel, on `device`.
    pub fn new(backbone: Backbone, device: Device) -> Normaliser {
        let info = backbone.info();
        let on_device =
            |values: Vec<f64>| Tensor::from_slice(&values).to_kind(Kind::Float).view([1, 3, 1, 1]).to_device(device);
        let scale = (0..3).map(|c| 1.0 / (255.0 * info.input_std[c])).collect();
        let shift = (0..3).map(|c| -info.input_mean[c] / info.input_std[c]).collect();
        Normaliser { scale: on_device(scale), shift: on_device(shift), device }
    }

    /// The device batches are normalised onto (the job's).
    pub fn device(&self) -> Device {
        self.device
    }

    /// `(pixels / 255 − mean) / std`, computed as `pixels · scale + shift` in place on the one
    /// float tensor the conversion allocates: this runs on every batch of every epoch, and each
    /// extra temporary is a batch-sized allocation. A one-channel (grayscale) batch is expanded to
    /// three channels by that same conversion (an expanded view costs nothing until converted).
    pub fn apply(&self, batch: &Tensor) -> Tensor {
        let batch = batch.to_device(self.device);
        let size = batch.size();
        let batch = if size[1] == 1 { batch.expand([size[0], 3, size[2], size[3]], false) } else { batch };
        let mut x = batch.to_kind(Kind::Float);
        let _ = x.g_mul_(&self.scale);
        let _ = x.g_add_(&self.shift);
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gray_batch_normalises_like_its_three_channel_copy() {
        let gray = Tensor::from_slice(&[0u8, 60, 128, 255]).view([1, 1, 2, 2]);
        let rgb = gray.expand([1, 3, 2, 2], false).contiguous();
        let normaliser = Normaliser::new(Backbone::Vgg16, Device::Cpu);
        let ours = normaliser.apply(&gray);
        assert_eq!(ours.size(), [1, 3, 2, 2]);
        assert!(ours.equal(&normaliser.apply(&rgb)));
    }

    #[test]
    fn normalising_matches_the_textbook_formula() {
        let pixels = Tensor::from_slice(&[0u8, 128, 255, 10, 20, 30]).view([1, 3, 1, 2]);
        for backbone in Backbone::ALL {
            let info = backbone.info();
            let ours = Normaliser::new(backbone, Device::Cpu).apply(&pixels);
            let mean = Tensor::from_slice(&info.input_mean).to_kind(Kind::Float).view([1, 3, 1, 1]);
            let std = Tensor::from_slice(&info.input_std).to_kind(Kind::Float).view([1, 3, 1, 1]);
            let expected = (pixels.to_kind(Kind::Float) / 255.0 - mean) / std;
            assert!(ours.allclose(&expected, 1e-5, 1e-5, false), "{}", backbone.name());
        }
    }
}
