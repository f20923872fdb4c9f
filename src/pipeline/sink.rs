//! `EstimateSink`: where published records go (JSON Lines, the journal, the display hub, a
//! test's collector). Records arrive typed ([`EstimateRecord`]); a sink that writes them out
//! serialises them itself, at the edge of the frame path.

use crate::frame::Image;
use crate::preprocess::ModelInput;
use crate::publish::record::EstimateRecord;

/// Where published records go (JSON Lines, the display hub, a test's collector).
pub trait EstimateSink: Send {
    fn publish(&mut self, record: &EstimateRecord);
    /// The live frame for the display; most sinks ignore it.
    fn frame(&mut self, _image: &Image, _outline: Option<&[(f32, f32)]>) {}
    /// The latest usable model input (normalised, `[C, H, W]`, with its sector), offered at
    /// the display's pace for on-demand work (saliency maps); most sinks ignore it.
    fn model_input(&mut self, _input: &ModelInput) {}
    /// A pipeline stage died: the run cannot produce estimates any more and is ending. Sinks
    /// that report health (the display) fail it; most ignore it.
    fn fault(&mut self, _reason: &str) {}
    /// Called once at the end of the run.
    fn finish(&mut self) {}
}
