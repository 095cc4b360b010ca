//! An ONNX graph and its `ModelProto` encoding, with the field numbers of `onnx.proto`
//! (ONNX 1.15). Only what an exported MLP needs: float tensors stored as `raw_data`,
//! float, int and string attributes, and 2-D inputs and outputs with a symbolic batch
//! dimension.

use crate::proto::{bytes_field, float_field, int_field};

/// `TensorProto.DataType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemType {
    Float = 1,
    Int64 = 7,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Float(f32),
    Int(i64),
    Str(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: &'static str,
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: Vec<(&'static str, Attr)>,
}

/// A weight stored in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Initializer {
    pub name: String,
    pub dims: Vec<usize>,
    pub values: Vec<f32>,
}

/// A graph input or output: `[batch, width]` (or `[batch]` when `width` is `None`), the
/// batch dimension named so that any number of rows can be fed.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub elem: ElemType,
    pub width: Option<usize>,
}

/// The symbolic name of the batch dimension.
pub const BATCH_DIM: &str = "batch";

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    pub name: String,
    pub nodes: Vec<Node>,
    pub initializers: Vec<Initializer>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
}

impl Graph {
    /// Bytes of weight data, to stay under protobuf's 2 GiB message limit.
    pub fn weight_bytes(&self) -> usize {
        self.initializers.iter().map(|t| 4 * t.values.len()).sum()
    }
}

/// What the `ModelProto` says about its producer and format.
pub struct ModelInfo<'a> {
    pub ir_version: i64,
    pub opset: i64,
    pub producer_version: &'a str,
    pub doc: &'a str,
}

pub fn encode_model(graph: &Graph, info: &ModelInfo) -> Vec<u8> {
    let mut m = Vec::with_capacity(graph.weight_bytes() + 4096);
    int_field(&mut m, 1, info.ir_version);
    bytes_field(&mut m, 2, b"steadygrad");
    bytes_field(&mut m, 3, info.producer_version.as_bytes());
    bytes_field(&mut m, 6, info.doc.as_bytes());
    bytes_field(&mut m, 7, &encode_graph(graph));
    // The default domain ("") is the ai.onnx operator set.
    let mut opset = Vec::new();
    bytes_field(&mut opset, 1, b"");
    int_field(&mut opset, 2, info.opset);
    bytes_field(&mut m, 8, &opset);
    m
}

fn encode_graph(g: &Graph) -> Vec<u8> {
    let mut out = Vec::with_capacity(g.weight_bytes() + 4096);
    for n in &g.nodes {
        bytes_field(&mut out, 1, &encode_node(n));
    }
    bytes_field(&mut out, 2, g.name.as_bytes());
    for t in &g.initializers {
        bytes_field(&mut out, 5, &encode_tensor(t));
    }
    for v in &g.inputs {
        bytes_field(&mut out, 11, &encode_value_info(v));
    }
    for v in &g.outputs {
        bytes_field(&mut out, 12, &encode_value_info(v));
    }
    out
}

fn encode_node(n: &Node) -> Vec<u8> {
    let mut out = Vec::new();
    for i in &n.inputs {
        bytes_field(&mut out, 1, i.as_bytes());
    }
    for o in &n.outputs {
        bytes_field(&mut out, 2, o.as_bytes());
    }
    bytes_field(&mut out, 3, n.name.as_bytes());
    bytes_field(&mut out, 4, n.op.as_bytes());
    for (name, a) in &n.attrs {
        let mut attr = Vec::new();
        bytes_field(&mut attr, 1, name.as_bytes());
        // AttributeProto.AttributeType: FLOAT = 1, INT = 2, STRING = 3.
        let kind = match a {
            Attr::Float(f) => {
                float_field(&mut attr, 2, *f);
                1
            }
            Attr::Int(i) => {
                int_field(&mut attr, 3, *i);
                2
            }
            Attr::Str(s) => {
                bytes_field(&mut attr, 4, s.as_bytes());
                3
            }
        };
        int_field(&mut attr, 20, kind);
        bytes_field(&mut out, 5, &attr);
    }
    out
}

fn encode_tensor(t: &Initializer) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * t.values.len() + 64);
    for &d in &t.dims {
        int_field(&mut out, 1, d as i64);
    }
    int_field(&mut out, 2, ElemType::Float as i64);
    bytes_field(&mut out, 8, t.name.as_bytes());
    // raw_data is little-endian whatever the host, as the ONNX spec requires.
    let raw: Vec<u8> = t.values.iter().flat_map(|v| v.to_le_bytes()).collect();
    bytes_field(&mut out, 9, &raw);
    out
}

fn encode_value_info(v: &ValueInfo) -> Vec<u8> {
    let mut shape = Vec::new();
    let mut batch = Vec::new();
    bytes_field(&mut batch, 2, BATCH_DIM.as_bytes());
    bytes_field(&mut shape, 1, &batch);
    if let Some(w) = v.width {
        let mut dim = Vec::new();
        int_field(&mut dim, 1, w as i64);
        bytes_field(&mut shape, 1, &dim);
    }
    let mut tensor = Vec::new();
    int_field(&mut tensor, 1, v.elem as i64);
    bytes_field(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    bytes_field(&mut ty, 1, &tensor);
    let mut out = Vec::new();
    bytes_field(&mut out, 1, v.name.as_bytes());
    bytes_field(&mut out, 2, &ty);
    out
}
