//! safetensors files: an 8-byte little-endian header length, a JSON header naming each
//! tensor's dtype, shape and byte range, then the tensor data.

use super::array::{Array, Elem};
use super::load::{build, LoadOptions};
use super::Dataset;
use ::safetensors::tensor::Metadata;
use ::safetensors::{Dtype, SafeTensors};
use anyhow::{anyhow, bail, ensure, Context, Result};

const FEATURE_NAMES: [&str; 5] = ["features", "x", "X", "inputs", "data"];
const LABEL_NAMES: [&str; 6] = ["labels", "label", "y", "Y", "targets", "target"];
/// The safetensors crate's own limit.
const MAX_HEADER: u64 = 100_000_000;

pub(crate) fn parse(bytes: &[u8], opts: &LoadOptions) -> Result<Dataset> {
    ensure!(
        bytes.len() > 8 && bytes[8] == b'{',
        "not a safetensors file: it must start with an 8-byte header length followed by a JSON \
         object ('{{' at byte offset 8)"
    );
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    ensure!(
        n <= MAX_HEADER,
        "not a safetensors file: the header length at byte offset 0 is {n} bytes, over the \
         format's limit of {MAX_HEADER}"
    );
    let header_end = 8 + n as usize;
    ensure!(
        header_end <= bytes.len(),
        "truncated file: the header length at byte offset 0 declares {n} bytes of JSON header, \
         but only {} bytes follow",
        bytes.len() - 8
    );
    // Read the header ourselves first so a short file is reported as truncated, with
    // sizes, rather than as the crate's "metadata incomplete buffer".
    let meta: Metadata = serde_json::from_slice(&bytes[8..header_end])
        .map_err(|e| anyhow!("malformed safetensors header at byte offset 8: {e}"))?;
    let data_len = bytes.len() - header_end;
    ensure!(
        meta.data_len() <= data_len,
        "truncated file: the header declares {} bytes of tensor data from byte offset \
         {header_end}, but only {data_len} bytes follow",
        meta.data_len()
    );
    let file =
        SafeTensors::deserialize(bytes).map_err(|e| anyhow!("invalid safetensors file: {e}"))?;
    let mut names: Vec<&str> = file.names();
    names.sort_unstable();
    let tensor = |given: &Option<String>, defaults: &[&str], role: &str| -> Result<Array<'_>> {
        let name = match given {
            Some(g) => {
                ensure!(
                    names.contains(&g.as_str()),
                    "no tensor is named '{g}'; the file holds: {}",
                    names.join(", ")
                );
                g.as_str()
            }
            None => *defaults
                .iter()
                .find(|d| names.contains(d))
                .with_context(|| {
                    format!(
                        "no {role} tensor: expected one named {}; the file holds: {} (set the \
                         tensor name)",
                        defaults.join(", "),
                        names.join(", ")
                    )
                })?,
        };
        let view = file.tensor(name)?;
        let info = meta.info(name).context("tensor listed in the header")?;
        let elem = match view.dtype() {
            Dtype::U8 | Dtype::BOOL => Elem::U8,
            Dtype::I8 => Elem::I8,
            Dtype::U16 => Elem::U16,
            Dtype::I16 => Elem::I16,
            Dtype::U32 => Elem::U32,
            Dtype::I32 => Elem::I32,
            Dtype::U64 => Elem::U64,
            Dtype::I64 => Elem::I64,
            Dtype::F32 => Elem::F32,
            Dtype::F64 => Elem::F64,
            other => bail!(
                "tensor '{name}' has dtype {other:?}, which is not supported: use F32, F64, U8, \
                 I8, I16, I32 or I64"
            ),
        };
        Array::new(
            format!("tensor '{name}'"),
            elem,
            false,
            view.shape().to_vec(),
            view.data(),
            header_end + info.data_offsets.0,
            true,
        )
    };
    let x = tensor(&opts.features_tensor, &FEATURE_NAMES, "features")?;
    let y = tensor(&opts.labels_tensor, &LABEL_NAMES, "labels")?;
    let (features, rows, width) = x.features()?;
    let (targets, label_rows, tdim) = y.targets()?;
    ensure!(
        rows == label_rows,
        "row counts differ: {} has {rows} rows but {} has {label_rows}",
        x.what,
        y.what
    );
    build(features, width, targets, tdim, &opts.task, &|i| {
        y.locate(i, tdim)
    })
}
