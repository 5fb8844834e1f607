//! The networks of InstructDiffusion and how their weights are found and loaded.
//!
//! One file per network (after candle-transformers): [`unet`], [`vae`], [`clip`], with their
//! building blocks; [`load`] turns a model source (diffusers folder, single LDM checkpoint, hub
//! id) into [`load::Model`]. Networks receive a `VarBuilder` and never open files.

pub mod attention;
pub mod clip;
pub mod embeddings;
pub mod kernels;
pub mod load;
pub mod lora;
pub mod nn;
pub mod resnet;
pub mod unet;
pub mod unet_blocks;
pub mod vae;

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::clip::{Activation, ClipConfig, ClipTextModel};
    use super::unet::{BlockKind, UNet2DConditionModel, UNetConfig};
    use super::vae::{AutoencoderKL, VaeConfig};

    /// Every trainable tensor must receive a non-zero gradient: candle's fused softmax and
    /// layer-norm kernels have no backward and would silently cut the graph.
    fn assert_all_vars_get_gradients(varmap: &VarMap, loss: &Tensor, what: &str) {
        let grads = loss.backward().expect("backward");
        let data = varmap.data().lock().expect("varmap lock");
        let mut dead = Vec::new();
        for (name, var) in data.iter() {
            let g = grads.get(var.as_tensor());
            let mass: f32 = g
                .map(|g| {
                    g.abs()
                        .and_then(|a| a.sum_all())
                        .and_then(|s| s.to_dtype(DType::F32))
                        .and_then(|s| s.to_scalar())
                        .unwrap_or(0.0)
                })
                .unwrap_or(0.0);
            if mass == 0.0 {
                dead.push(name.clone());
            }
        }
        assert!(data.len() > 10, "{what}: only {} variables", data.len());
        assert!(dead.is_empty(), "{what}: no gradient reaches {dead:?}");
    }

    /// The vendored candle sums over non-trailing dimensions run by run (PATCHES.md); the
    /// result must equal the strided path's (a transposed view, which the patch leaves alone).
    #[test]
    fn patched_sum_over_inner_dims_matches_the_strided_sum() -> candle_core::Result<()> {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 5, 4, 9), &dev)?;
        // The same values in a non-contiguous view of another layout.
        let strided = x.transpose(0, 1)?.contiguous()?.transpose(0, 1)?;
        assert!(!strided.is_contiguous());
        for dims in [
            vec![0, 2, 3],
            vec![0],
            vec![0, 2],
            vec![1, 3],
            vec![0, 1, 2],
            vec![2],
        ] {
            let a = x.sum_keepdim(dims.clone())?;
            let b = strided.sum_keepdim(dims.clone())?;
            let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "sum over {dims:?} differs by {diff}");
        }
        Ok(())
    }

    /// The vendored candle takes a stride-1 convolution's input gradient as a convolution with
    /// the flipped, transposed kernel (PATCHES.md); it must equal the transposed convolution it
    /// replaces, for any padding and dilation, and strided convolutions keep the latter.
    #[test]
    fn a_convolution_input_gradient_matches_the_transposed_convolution() -> candle_core::Result<()>
    {
        let dev = candle_core::Device::Cpu;
        // (kernel, padding, stride, dilation)
        for (k, p, s, d) in [
            (3, 1, 1, 1),
            (1, 0, 1, 1),
            (3, 0, 1, 1),
            (5, 2, 1, 1),
            (3, 2, 1, 2),
            (3, 1, 2, 1),
        ] {
            // Upstream's strided path takes one output padding from the height: square there.
            let width = if s == 1 { 8 } else { 9 };
            let x = candle_core::Var::randn(0f64, 1.0, (2, 3, 9, width), &dev)?;
            let w = Tensor::randn(0f64, 1.0, (4, 3, k, k), &dev)?;
            let y = x.conv2d(&w, p, s, d, 1)?;
            let mix = Tensor::randn(0f64, 1.0, y.shape(), &dev)?;
            let grads = (y * &mix)?.sum_all()?.backward()?;
            let out_h = (mix.dim(2)? - 1) * s + d * (k - 1) + 1 - 2 * p;
            let out_w = (mix.dim(3)? - 1) * s + d * (k - 1) + 1 - 2 * p;
            assert_eq!(
                9 - out_h,
                width - out_w,
                "one output padding for both sides"
            );
            let want = mix.conv_transpose2d(&w, p, 9 - out_h, s, d)?;
            let got = grads.get(&x).expect("x tracks");
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(
                diff < 1e-10,
                "k {k} padding {p} stride {s} dilation {d}: off by {diff}"
            );
        }
        Ok(())
    }

    /// The vendored candle computes no gradient product for a matrix product's untracked
    /// operand (PATCHES.md); the tracked one's gradient is unchanged.
    #[test]
    fn a_frozen_operand_of_a_product_gets_no_gradient() -> candle_core::Result<()> {
        let dev = candle_core::Device::Cpu;
        let x = candle_core::Var::randn(0f32, 1.0, (2, 3, 4), &dev)?;
        let frozen = Tensor::randn(0f32, 1.0, (2, 4, 5), &dev)?;
        let mix = Tensor::randn(0f32, 1.0, (2, 3, 5), &dev)?;
        let grads = (x.matmul(&frozen)? * &mix)?.sum_all()?.backward()?;
        assert!(grads.get(&frozen).is_none());
        // d/dx sum(mix * (x @ w)) = mix @ w^T.
        let want = mix.matmul(&frozen.t()?)?;
        let diff = (grads.get(&x).expect("x tracks") - want)?
            .abs()?
            .max_all()?;
        assert!(diff.to_scalar::<f32>()? < 1e-5);
        Ok(())
    }

    #[test]
    fn unet_vae_and_text_encoder_train_end_to_end() -> candle_core::Result<()> {
        all_networks_get_gradients(DType::F32)
    }

    /// The layers' generic form (candle's own convolutions, composed softmax and norms), which
    /// every device but the CPU in f32 runs, CUDA training included: f64 on the CPU takes it.
    #[test]
    fn the_generic_layers_train_end_to_end_too() -> candle_core::Result<()> {
        all_networks_get_gradients(DType::F64)
    }

    fn all_networks_get_gradients(dtype: DType) -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, &dev);
        let cfg = UNetConfig {
            in_channels: 8,
            out_channels: 4,
            block_out_channels: vec![8, 16],
            down_blocks: vec![BlockKind::CrossAttn, BlockKind::Plain],
            up_blocks: vec![BlockKind::Plain, BlockKind::CrossAttn],
            layers_per_block: 1,
            attention_heads: vec![2, 2],
            cross_attention_dim: 8,
            // The first block's attention in diffusers' `only_cross_attention` form, so that its
            // gradients are checked too.
            only_cross_attention: vec![true, false],
            norm_num_groups: 4,
            norm_eps: 1e-5,
            use_linear_projection: false,
            flip_sin_to_cos: true,
            freq_shift: 0.,
        };
        let unet = UNet2DConditionModel::new(&cfg, None, vb)?;
        let x = Tensor::randn(0f32, 1., (2, 8, 8, 8), &dev)?.to_dtype(dtype)?;
        let t = Tensor::new(&[10f32, 500.], &dev)?.to_dtype(dtype)?;
        let ctx = Tensor::randn(0f32, 1., (2, 5, 8), &dev)?.to_dtype(dtype)?;
        let loss = unet.forward(&x, &t, &ctx)?.sqr()?.mean_all()?;
        assert_all_vars_get_gradients(&varmap, &loss, "unet");

        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, &dev);
        let vcfg = VaeConfig {
            block_out_channels: vec![8, 16],
            norm_num_groups: 4,
            layers_per_block: 1,
            ..VaeConfig::sd15()
        };
        let vae = AutoencoderKL::new(&vcfg, vb)?;
        let img = Tensor::randn(0f32, 1., (1, 3, 8, 8), &dev)?.to_dtype(dtype)?;
        let (mean, logvar) = vae.encode_moments(&img)?;
        let loss = ((vae.decode(&mean)? - &img)?.sqr()?.mean_all()? + logvar.sqr()?.mean_all()?)?;
        assert_all_vars_get_gradients(&varmap, &loss, "vae");

        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, &dev);
        let ccfg = ClipConfig {
            vocab_size: 20,
            hidden_size: 8,
            intermediate_size: 12,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            max_position_embeddings: 6,
            layer_norm_eps: 1e-5,
            activation: Activation::QuickGelu,
        };
        let clip = ClipTextModel::new(&ccfg, vb)?;
        // Every token id appears so that every embedding row is used.
        let ids = Tensor::new(
            &[
                [0u32, 1, 2, 3, 4, 5],
                [6, 7, 8, 9, 10, 11],
                [12, 13, 14, 15, 16, 17],
                [18, 19, 0, 1, 2, 3],
            ],
            &dev,
        )?;
        let loss = clip.forward(&ids)?.sin()?.mean_all()?;
        assert_all_vars_get_gradients(&varmap, &loss, "text encoder");
        Ok(())
    }
}
