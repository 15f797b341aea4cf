#![forbid(unsafe_code)]
//! What the trainer's final report and `runtime` compute identically from predictions: the
//! classification report and ROC maths (`report`), the per-patient table (`patients`),
//! neighbour context over a slide's grid (`context`), and the charts (`plot`).

pub mod context;
pub mod patients;
pub mod plot;
pub mod report;
