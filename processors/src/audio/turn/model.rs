//! [`SmartTurn`]: the smart-turn v3.2 ONNX model on tract, from a checksum-verified file.
//!
//! Consumes 16 kHz mono `f32` audio (the user's turn so far, any length; the model sees the last
//! 8 s), produces the probability that the turn is complete. Loading reads the whole file once
//! (8.7 MB) to hash it, then hands the same bytes to tract, so the checksum covers exactly what is
//! run. See the module docs of [`crate::audio::turn`] for why tract and for the graph rewrite.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tract_onnx::pb::{AttributeProto, ModelProto, NodeProto, attribute_proto::AttributeType, tensor_proto::DataType};
use tract_onnx::prelude::*;

use super::TurnError;
use super::features::{N_FRAMES, N_MELS, WhisperFeatures};

/// SHA-256 of `smart-turn-v3.2-cpu.onnx` as shipped in pipecat-ai 1.14.0
/// (`pipecat/audio/turn/smart_turn/data/`), the file the reference fixtures were made with.
pub const SMART_TURN_V3_2_SHA256: &str = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f";

/// The plan tract runs: optimised once, shared (read-only) by every worker thread.
pub(super) type Plan = Arc<TypedRunnableModel>;

/// The smart-turn v3.2 end-of-turn model with its feature extractor and run state.
///
/// One instance per thread (`predict` takes `&mut self` for the reused buffers); instances made
/// with [`SmartTurn::share`] reuse one optimised plan.
pub struct SmartTurn {
    plan: Plan,
    state: TypedSimpleState,
    features: WhisperFeatures,
}

impl std::fmt::Debug for SmartTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmartTurn").finish_non_exhaustive()
    }
}

impl SmartTurn {
    /// Load the model from `path`, refusing any file whose SHA-256 is not
    /// [`SMART_TURN_V3_2_SHA256`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TurnError> {
        let path = path.as_ref();
        let bytes = read(path)?;
        let actual = hex(&Sha256::digest(&bytes));
        if actual != SMART_TURN_V3_2_SHA256 {
            return Err(TurnError::ChecksumMismatch { path: path.into(), expected: SMART_TURN_V3_2_SHA256, actual });
        }
        Self::from_bytes(path, &bytes)
    }

    /// Load a model file without the checksum (a fine-tuned or re-exported smart-turn with the
    /// same input and output). Its graph must still build and have the expected shapes.
    pub fn load_unverified(path: impl AsRef<Path>) -> Result<Self, TurnError> {
        let path = path.as_ref();
        Self::from_bytes(path, &read(path)?)
    }

    /// Another instance sharing this one's optimised plan (for a second worker thread): no
    /// reload, only fresh buffers.
    pub fn share(&self) -> Result<Self, TurnError> {
        Self::with_plan(self.plan.clone(), Path::new("<shared plan>"))
    }

    fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, TurnError> {
        let invalid = |e: TractError| TurnError::ModelInvalid { path: path.into(), reason: format!("{e:#}") };
        // Value infos and output shapes carry the exporter's symbolic batch `s6`; pinning the
        // input to batch 1 contradicts them, so the shapes are inferred from the input instead.
        let onnx = tract_onnx::onnx().with_ignore_value_info(true).with_ignore_output_shapes(true);
        let mut proto = onnx.proto_model_for_read(&mut &bytes[..]).map_err(invalid)?;
        let rewritten = unfuse_dequantize_before_softmax(&mut proto);
        tracing::debug!(rewritten, "smart-turn: dequantizers in front of a softmax made explicit");
        let mut model = onnx.model_for_proto_model(&proto).map_err(invalid)?;
        model.set_input_fact(0, f32::fact([1, N_MELS, N_FRAMES]).into()).map_err(invalid)?;
        let plan = model.into_optimized().and_then(|m| m.into_runnable()).map_err(invalid)?;
        Self::with_plan(plan, path)
    }

    fn with_plan(plan: Plan, path: &Path) -> Result<Self, TurnError> {
        let invalid = |reason: String| TurnError::ModelInvalid { path: path.into(), reason };
        // A graph that builds but has other inputs/outputs is not this model: say so at load
        // rather than on the first call.
        let outputs = plan.model().output_outlets().map_err(|e| invalid(format!("{e:#}")))?;
        if plan.model().input_outlets().map(|i| i.len()).unwrap_or(0) != 1 || outputs.len() != 1 {
            return Err(invalid("expected one input (input_features) and one output".into()));
        }
        let out = plan.model().outlet_fact(outputs[0]).map_err(|e| invalid(format!("{e:#}")))?;
        if out.datum_type != f32::datum_type() || out.shape.as_concrete().map(|s| s.iter().product()) != Some(1usize) {
            return Err(invalid(format!("expected one f32 probability as output, the graph gives {out:?}")));
        }
        let state = plan.spawn().map_err(|e| invalid(format!("{e:#}")))?;
        Ok(Self { plan, state, features: WhisperFeatures::new() })
    }

    /// Probability (0..1) that the user's turn is complete, from the turn's 16 kHz mono audio in
    /// −1..1 (the last 8 s are used; Pipecat's decision is `> 0.5`, see
    /// [`COMPLETE_THRESHOLD`](super::COMPLETE_THRESHOLD)). Blocks for one inference: call it off
    /// the async runtime (see `SmartTurnWorker`).
    pub fn predict(&mut self, audio_16k: &[f32]) -> Result<f32, TurnError> {
        let features = self.features.compute(audio_16k);
        let input = Tensor::from_shape(&[1, N_MELS, N_FRAMES], features)
            .map_err(|e| TurnError::Inference { reason: format!("{e:#}") })?;
        self.predict_tensor(input)
    }

    /// Probability from precomputed `N_MELS × N_FRAMES` mel-major features (as
    /// [`WhisperFeatures::compute`] returns), for callers that extract features elsewhere.
    pub fn predict_features(&mut self, features: &[f32]) -> Result<f32, TurnError> {
        let input = Tensor::from_shape(&[1, N_MELS, N_FRAMES], features)
            .map_err(|e| TurnError::Inference { reason: format!("{e:#}") })?;
        self.predict_tensor(input)
    }

    fn predict_tensor(&mut self, input: Tensor) -> Result<f32, TurnError> {
        let failed = |e: TractError| TurnError::Inference { reason: format!("{e:#}") };
        let outputs = self.state.run(tvec!(input.into_tvalue())).map_err(failed)?;
        let out = outputs.first().ok_or_else(|| TurnError::Inference { reason: "no output".into() })?;
        let view = out.to_plain_array_view::<f32>().map_err(failed)?;
        let p = *view.iter().next().ok_or_else(|| TurnError::Inference { reason: "empty output".into() })?;
        if !p.is_finite() {
            return Err(TurnError::Inference { reason: format!("non-finite probability {p}") });
        }
        Ok(p)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TurnError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => TurnError::ModelMissing { path: PathBuf::from(path) },
        _ => TurnError::ModelRead { path: path.into(), source },
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Rewrite every `DequantizeLinear` whose output feeds a `Softmax` as
/// `(Cast<f32>(x) − Cast<f32>(zero_point)) · scale` — the same arithmetic, per the ONNX spec.
///
/// Why: tract 0.23.9's `DequantizeLinearF32::declutter` turns a `DequantizeLinear → … →
/// QuantizeLinear` chain over u8 into a 256-entry lookup table when every op in between reports
/// an element-wise axes mapping. `Softmax` reports one (its shape is preserved) although it mixes
/// a whole row, so the table is built from a softmax over 256 values and every attention weight
/// saturates. Without a `DequantizeLinear` at its head the chain is not matched. Only per-tensor
/// dequantizers (scalar scale) are rewritten; returns how many were.
fn unfuse_dequantize_before_softmax(proto: &mut ModelProto) -> usize {
    let Some(graph) = proto.graph.as_mut() else { return 0 };
    let softmax_inputs: std::collections::HashSet<String> =
        graph.node.iter().filter(|n| n.op_type == "Softmax").filter_map(|n| n.input.first().cloned()).collect();
    let scalar_inits: std::collections::HashSet<&str> =
        graph.initializer.iter().filter(|t| t.dims.is_empty()).map(|t| t.name.as_str()).collect();
    let mut rewritten = 0;
    let mut nodes = Vec::with_capacity(graph.node.len() + 16);
    for node in std::mem::take(&mut graph.node) {
        let is_target = node.op_type == "DequantizeLinear"
            && node.input.len() == 3
            && node.output.len() == 1
            && softmax_inputs.contains(&node.output[0])
            && scalar_inits.contains(node.input[1].as_str())
            && scalar_inits.contains(node.input[2].as_str());
        if !is_target {
            nodes.push(node);
            continue;
        }
        let (x, scale, zp, out) = (&node.input[0], &node.input[1], &node.input[2], &node.output[0]);
        let tmp = |suffix: &str| format!("{out}__voxline_{suffix}");
        nodes.push(cast_to_f32(&tmp("x"), x, &tmp("xf")));
        nodes.push(cast_to_f32(&tmp("zp"), zp, &tmp("zpf")));
        nodes.push(binary("Sub", &tmp("centre"), &tmp("xf"), &tmp("zpf"), &tmp("centred")));
        nodes.push(binary("Mul", &tmp("scale"), &tmp("centred"), scale, out));
        rewritten += 1;
    }
    graph.node = nodes;
    rewritten
}

fn cast_to_f32(name: &str, input: &str, output: &str) -> NodeProto {
    let to = AttributeProto {
        name: "to".into(),
        r#type: AttributeType::Int as i32,
        i: DataType::Float as i64,
        ..AttributeProto::default()
    };
    NodeProto {
        name: name.into(),
        op_type: "Cast".into(),
        input: vec![input.into()],
        output: vec![output.into()],
        attribute: vec![to],
        ..NodeProto::default()
    }
}

fn binary(op: &str, name: &str, a: &str, b: &str, output: &str) -> NodeProto {
    NodeProto {
        name: name.into(),
        op_type: op.into(),
        input: vec![a.into(), b.into()],
        output: vec![output.into()],
        ..NodeProto::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_names_the_fix() {
        let err = SmartTurn::load("/nonexistent/smart-turn.onnx").unwrap_err();
        assert!(matches!(err, TurnError::ModelMissing { .. }), "{err:?}");
        assert!(err.to_string().contains("fetch-smart-turn.sh"), "{err}");
    }

    #[test]
    fn corrupt_file_fails_the_checksum_not_the_parser() {
        let dir = std::env::temp_dir().join(format!("voxline-smart-turn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("truncated.onnx");
        std::fs::write(&path, b"\x08\x0a\x12\x04not a model").unwrap();
        let err = SmartTurn::load(&path).unwrap_err();
        assert!(matches!(err, TurnError::ChecksumMismatch { .. }), "{err:?}");
        // Without the checksum the same bytes are refused by the parser, with an error, not a panic.
        let err = SmartTurn::load_unverified(&path).unwrap_err();
        assert!(matches!(err, TurnError::ModelInvalid { .. }), "{err:?}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
