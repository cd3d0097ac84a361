"""Forecasting models for continuous multivariate series (issue 11, ETTh1).

The language-model kinds take token ids; these kinds take values. Each is a registered
model kind (:mod:`lmn.kinds`) that the shared trainer runs with a regression task such as
``etth1`` (:mod:`lmn.tasks.etth1`):

==================  ======================================================================
kind                model
==================  ======================================================================
``lmn-ts``          LMN blocks (:class:`lmn.model.LMNBlock`) behind the adapter below
``transformer-ts``  a pre-norm Transformer encoder (torch ``nn.TransformerEncoderLayer``,
                    bidirectional attention, sinusoidal positions) behind the same adapter
``mamba2-ts``       transformers' ``Mamba2Model`` (fed ``inputs_embeds``) behind the same adapter
``dlinear``         DLinear (Zeng et al. 2023): moving-average decomposition, one linear map
                    input window -> horizon for the trend and one for the remainder, shared
                    by every channel
==================  ======================================================================

The contract (different from the token kinds'): ``forward(x (B, L, C) float) -> (B, H, C)``,
the forecast of the next H steps of the C channels after an input window of L steps. The
config's ``vocab_size`` is the *output table* the task sets: ``H * C`` values per window
(so the horizon always follows the task); ``n_channels`` is C.

The adapter (:mod:`lmn.timeseries.common`) of the sequence models: optional instance
normalisation of each window (RevIN without affine parameters: subtract each channel's mean
over the window, divide by its std, add them back to the forecast), a linear embedding
``Linear(C, d)`` in place of the token table, the backbone, and the readout: the forecast
is read from the **last position's** final hidden state, ``Linear(d, H * C)``.
"""

TS_KINDS = ("lmn-ts", "transformer-ts", "mamba2-ts", "dlinear")
