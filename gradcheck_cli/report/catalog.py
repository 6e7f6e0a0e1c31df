"""The catalogue of finding kinds and recommendation ids: what each means, for humans.

One entry per stable id. `gradcheck explain ID`, `gradcheck list checks|fixes` and the SARIF
rules all read from here, so the wording lives in one place. No torch here: the numbers the
classifier uses are formatted from `classify.Thresholds` (torch-free) so the text cannot drift.

Text conventions (renderers rely on them, SARIF shows them as they are): paragraphs are separated
by a blank line; a line starting with "- " starts a list item; a paragraph whose lines all start
with four spaces is code and is printed verbatim.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from gradcheck_cli.analyse import depth, init_std
from gradcheck_cli.analyse.checks import dead_relu as _dead_relu
from gradcheck_cli.analyse.checks import divergence as _divergence
from gradcheck_cli.analyse.checks import init_scale as _init_scale
from gradcheck_cli.analyse.checks import nonfinite as _nonfinite
from gradcheck_cli.analyse.checks import saturated_activation as _saturated
from gradcheck_cli.analyse.recurrence import HORIZON_FRACTION
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.errors import UserError
from gradcheck_cli.report.records import FindingKind, RecommendationId


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    """A short name, e.g. "Vanishing gradient"."""
    summary: str
    """One sentence: what it means for training."""
    mechanism: str = ""
    """Why it happens (DOMAIN.md "The mechanism" / "Causes")."""
    measured: str = ""
    """What gradcheck measures to decide it, and which evidence keys the report carries."""
    thresholds: str = ""
    """The thresholds, each with its source."""
    fix: str = ""
    """What to change (finding kinds) or the change itself (recommendations)."""
    references: tuple[str, ...] = ()


def _num(value: float) -> str:
    """1e-3 as "1e-3", 1000 as "1e3", 70 as "70": the way the papers and DOMAIN.md write them."""
    if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e3):
        mantissa, exponent = f"{value:.0e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:g}"


T = Thresholds()
K = FindingKind
R = RecommendationId

# The references, written once. Each entry cites the ones its text relies on.
GLOROT_2010 = ("Glorot & Bengio 2010, Understanding the difficulty of training deep feedforward "
               "neural networks (AISTATS)")
HE_2015 = "He, Zhang, Ren & Sun 2015, Delving deep into rectifiers (ICCV): He init, PReLU"
IOFFE_2015 = "Ioffe & Szegedy 2015, Batch normalization (ICML)"
BA_2016 = "Ba, Kiros & Hinton 2016, Layer normalization (arXiv:1607.06450)"
HE_2016 = "He, Zhang, Ren & Sun 2016, Deep residual learning for image recognition (CVPR)"
HOCHREITER_1997 = "Hochreiter & Schmidhuber 1997, Long short-term memory (Neural Computation)"
CHO_2014 = "Cho et al. 2014, Learning phrase representations using RNN encoder-decoder (EMNLP): GRU"
PASCANU_2013 = ("Pascanu, Mikolov & Bengio 2013, On the difficulty of training recurrent neural "
                "networks (ICML): spectral-radius conditions, gradient clipping")
BENGIO_1994 = ("Bengio, Simard & Frasconi 1994, Learning long-term dependencies with gradient "
               "descent is difficult (IEEE TNN)")
SAXE_2014 = ("Saxe, McClelland & Ganguli 2014, Exact solutions to the nonlinear dynamics of learning "
             "in deep linear networks (ICLR)")
PENNINGTON_2017 = ("Pennington, Schoenholz & Ganguli 2017, Resurrecting the sigmoid in deep learning "
                   "through dynamical isometry (NeurIPS)")
LECUN_1998 = "LeCun, Bottou, Orr & Mueller 1998, Efficient BackProp (Neural Networks: Tricks of the Trade)"
AUTOTRAINER = ("Zhang, Zhai, Ma, Shen, Tao & Wang 2021, AUTOTRAINER: an automatic DNN training problem "
               "detection and repair system (ICSE): gradient-ratio rules < 1e-3 vanishing, > 70 exploding")
DEEPCHECKER = ("Ben Braiek & Khomh 2023, Testing feedforward neural networks training programs "
               "(ACM TOSEM, arXiv:2204.00694): TheDeepChecker's update-ratio bounds")
SAGEMAKER = ("Rauschmayr et al. 2021, Amazon SageMaker Debugger: a system for real-time insights into "
             "machine learning model training (MLSys): vanishing_gradient rule")
YANG_2019 = "Yang, Pennington, Rao, Sohl-Dickstein & Schoenholz 2019, A mean field theory of batch normalization (ICLR)"
CS231N = ("Karpathy, CS231n notes, Neural networks part 3: ratio of weight updates to weight "
          "magnitudes, healthy around 1e-3")
MAAS_2013 = ("Maas, Hannun & Ng 2013, Rectifier nonlinearities improve neural network acoustic models "
             "(ICML workshop): LeakyReLU")
CLEVERT_2016 = "Clevert, Unterthiner & Hochreiter 2016, Fast and accurate deep network learning by ELUs (ICLR)"
LU_2020 = "Lu, Shin, Su & Karniadakis 2020, Dying ReLU and initialization: theory and numerical examples (CiCP)"
HENDRYCKS_2016 = "Hendrycks & Gimpel 2016, Gaussian error linear units (GELUs) (arXiv:1606.08415)"
MICIKEVICIUS_2018 = "Micikevicius et al. 2018, Mixed precision training (ICLR): loss scaling"
IEEE_754 = "IEEE 754-2008: binary16 smallest normal 2^-14 ~ 6.1e-5, smallest subnormal 2^-24 ~ 6.0e-8"
LOSHCHILOV_2019 = "Loshchilov & Hutter 2019, Decoupled weight decay regularization (ICLR): AdamW"
KLAMBAUER_2017 = ("Klambauer, Unterthiner, Mayr & Hochreiter 2017, Self-normalizing neural networks (NeurIPS): "
                  "SELU, LeCun init")
KROGH_1992 = "Krogh & Hertz 1992, A simple weight decay can improve generalization (NeurIPS)"
GOODFELLOW_2016 = "Goodfellow, Bengio & Courville 2016, Deep Learning, ch. 4.1 (overflow and underflow) and 8.2"
PYTORCH_INIT = ("PyTorch nn.Linear/nn.Conv default init: kaiming_uniform_(a=sqrt(5)), i.e. "
                "U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std 1/sqrt(3 fan_in)")
PYTORCH_AMP = "PyTorch documentation, Automatic mixed precision: torch.amp.GradScaler"

NOT_YET_MEASURED = "Not yet measured by this version: no check emits this finding."
NOT_YET_RECOMMENDED = "Not yet recommended by this version: no rule emits this recommendation."

# The through-time rules of classify.py, quoted by several entries.
_RNN_VANISH = (
    f"- far end vs peak: a vanilla nn.RNN (or vanilla cell called in a loop) whose far end of the sequence "
    f"receives less than "
    f"{_num(T.vanish_relative)} of the peak per-step gradient vanishes through time (the 1e-3 ratio of "
    "AUTOTRAINER, applied along time as Pascanu et al. 2013 describe the decay).")
_RNN_EXPLODE = (
    f"- far end vs near end: any recurrent layer (RNN, LSTM, GRU) whose far end receives more than "
    f"{_num(T.explode_relative)}x the gradient at the near end explodes through time (AUTOTRAINER's "
    "70, along time).")
_RNN_ENDS = (
    "The near end is the step nearest the loss: the last step of a unidirectional layer; for a "
    "bidirectional layer, the end where more of the output gradient enters. The far end is the other "
    "one.")
_THROUGH_TIME_MEASURED = (
    "For nn.RNN, nn.LSTM and nn.GRU layers (any num_layers, batch_first or not, bidirectional): the "
    "gradient with respect to the layer's input at every time step, which includes what flows back "
    "through the recurrence (the gradient at the fused layer's output holds only each step's direct "
    "share and would miss it), as an RMS per step averaged over the probe batches. From it: the "
    "gradient at the far and near ends of the sequence, their ratio and the geometric per-step "
    "factor; the effective horizon, the number of steps back from the near end until the gradient "
    f"falls below {_num(HORIZON_FRACTION)} of its value there ('all' when it never does); and, for "
    "every weight_hh, its spectral radius and largest singular value against Pascanu's bound "
    "1/gamma (gamma bounds |f'|: 1 for tanh and relu, 1/4 for the sigmoid gates, so their bound is "
    "4). For LSTM/GRU the candidate block and the largest gate block are reported.\n\n"
    "A cell called once per step in a Python loop (nn.RNNCell, nn.GRUCell, nn.LSTMCell, or a user's "
    "own cell such as makemore's tanh(Linear(cat([x_t, h])))) is measured the same way: a layer whose "
    "call k+1 receives an input derived from call k's output, for at least 4 calls in a row, is a "
    "recurrence; the gradient reaching the state passed from each call to the next is its per-step "
    "profile (T - 1 values for T calls, first call to last). The cell is vanilla when every path "
    "from one state to the next passes through the layer (nn.RNNCell; a user cell without gates), "
    "gated when a path goes around it (nn.GRUCell/LSTMCell, gates, a residual add): only vanilla "
    "cells are called vanishing through time. For a user's own Linear cell the recurrent weight is "
    "the block of columns that reads the state (the whole square weight when the state is its "
    "input; for a cell owning its matrices, its one square matrix). Steps whose gradient "
    "underflowed to exactly 0 in float32 are counted (zero_steps) and "
    "left out of per_step_factor.\n\n"
    "Evidence keys: steps, bidirectional, near_end, far_end_step_grad_rms, near_end_step_grad_rms, "
    "far_over_near, per_step_factor, effective_horizon, first_step_grad_rms, last_step_grad_rms, "
    "peak_step_grad_rms, grad_norm, weight_norm, grad_to_weight, grad_rms, output_grad_rms, "
    "activation_rms, zero_steps, recurrent_cell, cell_calls, "
    "max_largest_singular_value, max_spectral_radius, recurrent_bound, and per weight_hh "
    "<name>.spectral_radius, <name>.largest_singular_value, <name>.bound; margin, present when "
    "far_over_near (or far over peak) lies within 2x of its threshold: how many times past it.")
_THROUGH_TIME_ELSEWHERE = (
    "A recurrent layer whose status comes from the gradient through time is reported as "
    "vanishing-through-time or exploding-through-time instead (see gradcheck explain).")
_STACK_MEASURED = (
    "When the layer lies in a geometric run of the signal scale (depth.py), the finding also carries "
    f"the run: {depth.MIN_LAYERS} or more consecutive dense layers through which the RMS of the "
    "gradient arriving at each output (followed from the output towards the input) or the RMS of the "
    "outputs (followed from the input towards the output) changes the same way at every step. Its "
    "evidence keys: stack_signal, stack_trend, stack_gain_per_layer, stack_total, stack_layers, "
    "stack_first, stack_last, stack_normalized, stack_residual, stack_plain.")
_COLLAPSE_MEASURED = (
    "When the layer lies in a plain segment whose signal collapses (depth.find_collapses), the finding "
    "carries collapse_activation_gain, collapse_activation_total (the output RMS, towards the output), "
    "collapse_gradient_gain, collapse_gradient_total (the output-gradient RMS, towards the input), "
    "collapse_layers, collapse_first, collapse_last.")
_MARGIN = (
    "margin: present when the number the rule decided on lies within 2x of its threshold; how many "
    "times past the threshold it is (a borderline call that another batch may flip).")
_STACK_THRESHOLD = (
    f"- geometric run (the evidence behind add-normalization and add-skip): at least "
    f"{depth.MIN_LAYERS} dense layers, at least "
    f"{_num(depth.MIN_GAIN)}x per layer on geometric average and {_num(depth.MIN_TOTAL)}x (one decade) "
    "over the run. A healthy stack's per-layer factors alternate around 1, and 1.2 per layer catches "
    "the slow growth of a deep plain BatchNorm stack (Yang et al. 2019) once it has compounded to a "
    "decade.")
_INIT_BAND = (
    "the accepted band runs from min(target, default) / "
    f"{_num(init_std.MARGIN)} to max(target, default) x {_num(init_std.MARGIN)}, where target is the "
    "variance-preserving std for the activation that follows (He sqrt(2/fan_in) for the ReLU family, "
    "LeCun sqrt(1/fan_in) for SELU, Xavier sqrt(2/(fan_in + fan_out)) for tanh, sigmoid or none) and "
    "default is PyTorch's default-init std 1/sqrt(3 fan_in), which trains too. A std off by 2x "
    "scales the signal 2x per layer, 2^depth overall; every standard init lies inside the band.")
_NONFINITE_UNSAFE = ", ".join(sorted(op for op in _nonfinite.UNSAFE_OPS if not op.endswith("_")))
_RNN_GATED = (
    "- LSTM/GRU are never called vanishing through time: at init their forget gates decay the gradient "
    "by design (forget bias 0 gives a factor ~0.5 per step) and learn to keep it.")

FINDINGS: dict[FindingKind, Entry] = {
    K.VANISHING: Entry(
        K.VANISHING.value, "Vanishing gradient",
        "The layer receives too little gradient to learn at the pace of the rest of the model.",
        mechanism=(
            "Backpropagation multiplies the local Jacobians of the layers between the loss and this "
            "layer, each of the form diag(f'(a)) W. When these factors are typically smaller than 1 in "
            "norm, the gradient shrinks geometrically towards the input and the early layers stop "
            "learning while the last ones still do.\n\n"
            "Common causes: saturating activations (sigmoid'(x) <= 0.25 everywhere, so every sigmoid "
            "layer divides the gradient by at least 4); weights initialised too small (e.g. N(0, 0.01)); "
            "depth without a short path (no residual connection)."),
        measured=(
            "Per layer (a module that owns parameters), averaged over the probe batches: grad_norm (L2 "
            "norm of the layer's own parameter gradients), weight_norm, grad_to_weight = grad_norm / "
            "weight_norm (times the learning rate, the relative change one SGD step makes), grad_rms (the "
            "typical gradient element), and the RMS of the output and of the gradient arriving at the "
            "output.\n\n"
            "Evidence keys: grad_norm, weight_norm, grad_to_weight, grad_rms, output_grad_rms, "
            f"activation_rms.\n\n{_STACK_MEASURED}\n\n{_COLLAPSE_MEASURED}\n\n{_MARGIN}"),
        thresholds=(
            f"- relative: grad/weight below {_num(T.vanish_relative)} of the best dense layer's, with no "
            "dense layer before it learning faster (AUTOTRAINER's first/last gradient ratio < 1e-3, "
            "applied to every layer against the best one).\n"
            f"- absolute: grad/weight below {_num(T.vanish_grad_to_weight)}: even at lr = 1 the weights "
            "would move by less than 1e-7 per step, three decades under TheDeepChecker's lower bound of "
            "1e-4 on the update ratio.\n"
            f"- zero weights (weight RMS below {_num(T.zero_weight_rms)}: no ratio exists): gradient RMS "
            f"below {_num(T.vanish_grad_rms)} (SageMaker Debugger's vanishing_gradient rule).\n"
            f"- signal collapse: in a plain segment of consecutive dense layers (no normalization layer "
            "between two of them), the median per-layer factor of the output RMS (towards the output) and "
            "of the output-gradient RMS (towards the input), each compounded over the segment, both below "
            f"{_num(T.collapse)} (AUTOTRAINER's 1e-3; He et al. 2015: a 30-layer ReLU net at weight "
            "variance 1/fan_in, 2^-14.5 over its depth, does not learn). Every layer of the segment is "
            "vanishing: dW = delta h^T carries both decays.\n"
            f"{_STACK_THRESHOLD}\n\n"
            "Normalization affine parameters and embedding tables are judged by the absolute rules only: "
            f"their grad/weight is not comparable with a weight matrix's. {_THROUGH_TIME_ELSEWHERE}\n\n"
            "Not judged at step 0, by design: layers with exactly zero gradient before a zero-initialised "
            "layer (ViT's head); layers of a branch scaled by a near-zero vector (layer scale 1e-6, "
            "ReZero). The best layer of the relative rule is the fastest sanely initialised one: a "
            "classifier initialised N(0, 0.01) (SqueezeNet, RegNet) is no yardstick."),
        fix=(
            "Find the cause among the findings and recommendations of the same scan: swap saturating "
            "activations for ReLU/GELU (swap-activation), re-initialise with the variance-preserving "
            "std (he-init, xavier-init), add normalization or residual connections to deep plain stacks "
            "(add-normalization, add-skip)."),
        references=(GLOROT_2010, AUTOTRAINER, DEEPCHECKER, SAGEMAKER, YANG_2019, SAXE_2014),
    ),
    K.EXPLODING: Entry(
        K.EXPLODING.value, "Exploding gradient",
        "The layer's gradient is so large that one optimizer step would wreck its weights.",
        mechanism=(
            "The same product of layer Jacobians diag(f'(a)) W as for vanishing gradients, with the "
            "factors typically larger than 1 in norm: the gradient grows geometrically towards the input. "
            "Vanishing and exploding are the same phenomenon with the gain on different sides of 1.\n\n"
            "Common causes: weights initialised too large (e.g. N(0, 1): activations and gradients grow "
            "by ~sqrt(fan_in x gain) per layer); a deep plain stack (even with BatchNorm, which explodes "
            "at init without residual connections, Yang et al. 2019); a learning rate that makes the "
            "weights grow. Left alone, the values overflow to inf, then turn NaN."),
        measured=(
            "The same per-layer quantities as for vanishing gradients: grad_norm, weight_norm, "
            "grad_to_weight, grad_rms, and the RMS of the gradient arriving at each layer's output "
            "(output_grad_rms), which is compared along a stack of identical layers.\n\n"
            "Evidence keys: grad_norm, weight_norm, grad_to_weight, grad_rms, output_grad_rms, "
            f"activation_rms.\n\n{_STACK_MEASURED}\n\n{_MARGIN}\n\n"
            "When the first NaN/Inf is an overflow (see nonfinite) at the end of a measured growth run, "
            "one finding for the whole model (layer null) carries the run's stack_* keys and the "
            "overflow's origin, op, direction, input_max_abs and dtype."),
        thresholds=(
            f"- absolute: grad/weight above {_num(T.explode_grad_to_weight)}: even a learning rate of 1e-4 "
            "changes the weights by more than 10% in one step, beyond TheDeepChecker's upper bound on the "
            "update ratio (log10 <= -1). Healthy models measure 1e-3..5 here. Weight matrices and kernels "
            "only: a vector initialised near zero (layer scale 1e-6, ReZero) has a huge ratio by design.\n"
            f"- growth through a stack: in a stack of at least {T.min_stack} identical dense layers (same "
            f"type and size), a gradient at a layer's output more than {_num(T.explode_relative)}x that at "
            "the stack's last layer (AUTOTRAINER's > 70 gradient ratio), each layer's growth read off the "
            "stack's least-squares geometric fit so that one layer's batch noise does not decide.\n"
            f"{_STACK_THRESHOLD}\n\n"
            f"{_THROUGH_TIME_ELSEWHERE}"),
        fix=(
            "Stop a single step from wrecking the weights with gradient clipping (clip-gradients) and a "
            "lower learning rate (lower-lr); remove the cause with the variance-preserving init (he-init, "
            "xavier-init) and, for deep plain stacks, normalization and residual connections "
            "(add-normalization, add-skip)."),
        references=(GLOROT_2010, HE_2015, YANG_2019, AUTOTRAINER, DEEPCHECKER),
    ),
    K.NONFINITE: Entry(
        K.NONFINITE.value, "NaN/Inf in the forward or backward pass",
        "An operation produced NaN or Inf, so the loss or the gradients are not finite.",
        mechanism=(
            "NaN during training is almost always a consequence, not a cause. It comes from one of two "
            "places: an overflow after activations or gradients grew out of range (float32 overflows "
            "above ~3.4e38; exp(x) already overflows for x > 88.7), or one numerically unsafe operation: "
            "log, sqrt or division of zero or negative values, exp overflow, 0/0, a derivative that is "
            "infinite at the input (sqrt at 0), a softmax over a row in which all positions are masked "
            "(every score -inf: 0/0). Once one element is NaN, every operation that touches it "
            "spreads it, so a NaN loss says little about where it started."),
        measured=(
            "Per layer, the count of NaN/Inf gradient elements summed over the probe batches, and the "
            "loss of every batch. When a batch fails, it is replayed once (same weights, same RNG "
            "state; never on a healthy model) with every torch function watched, to find the origin:\n"
            "- forward: the first op whose output holds NaN/Inf while all its inputs were finite, named "
            "as written (log, div, exp, linear), with the innermost module running it ('(loss)' when it "
            "ran in the loss) and the module that finished just before it;\n"
            "- backward, when the forward was clean: the first autograd node, in backward order, that "
            "returned a NaN/Inf gradient from a finite incoming gradient (a custom autograd.Function's "
            "backward included);\n"
            "- weights: the first layer whose weights are already NaN/Inf (after diverged --steps, or "
            "from a checkpoint).\n\n"
            "An op handed an explicit -inf (masked_fill(mask, float('-inf')), torch.full(..., -inf)) "
            "writes a mask on purpose and is no origin; a softmax, log_softmax or attention op "
            "(nn.MultiheadAttention, F.scaled_dot_product_attention) that returns NaN for a row in which "
            "every position is masked is. When a later op or loss_fn raises on the NaN "
            "(F.binary_cross_entropy refuses NaN probabilities), the scan stops at that batch and reports "
            "this finding with the origin and what raised, instead of a user error; a raise on finite "
            "values stays a user error.\n\n"
            "One origin is one finding: wherever the NaN spreads, there is one nonfinite finding, at the "
            "origin module (the whole model when the op ran outside every layer), listing the affected "
            "layers; each of them still has status nonfinite.\n\n"
            "Evidence keys: nonfinite_grads (summed over the affected layers), params, nonfinite_losses, "
            "affected_layers (comma-separated, execution order), affected_count, origin, origin_type, op, "
            "direction, cause, after, input_max_abs (the largest |input| of the op, or of the gradient it "
            "received; for all-masked, of its finite inputs), produced (nan, inf or nan+inf), masked_rows "
            "and rows (all-masked: the rows with every position masked, of all rows), raised (what "
            "raised on the NaN). Without an origin (the batch held NaN/Inf, or the replay did not "
            "reproduce it) origin is null and cause 'unknown'."),
        thresholds=(
            "- any NaN/Inf gradient element, or a NaN/Inf loss on any probe batch, is an error: there is "
            "no tolerance, since IEEE 754 NaN propagates through every later operation and one NaN step "
            "destroys the weights it touches.\n"
            "- cause 'overflow': the op's inputs had already reached sqrt(dtype max) (1.8e19 in float32, "
            "256 in float16), from where one product leaves the range; or the op is plain arithmetic "
            "(linear, matmul, add, mul, sum, ...), which can only leave the range by overflowing "
            "(IEEE 754 binary32/binary16 ranges).\n"
            "- cause 'unsafe-op' (forward) or 'backward': a numerically unsafe op with moderate inputs, "
            f"one of {_NONFINITE_UNSAFE} (and their in-place forms); 'backward' also for a custom "
            "autograd.Function whose backward (named '...Backward') returned NaN/Inf.\n"
            "- cause 'weights': the weights themselves were already NaN/Inf.\n"
            "- cause 'all-masked' (all positions masked): a softmax-type op got at least one row whose "
            "every position is -inf or masked out; exp(-inf) = 0 everywhere, so the row is 0/0 = NaN. "
            "Whatever the magnitudes, this is no overflow."),
        fix=(
            "The fix follows the cause. For 'unsafe-op' and 'backward', guard that op in the origin module "
            "(guard-nonfinite): clamp before log/sqrt, add eps to divisors, use log1p, logsumexp, "
            "log_softmax and F.cross_entropy on logits. For 'all-masked', mask with a large negative "
            "finite value (torch.finfo(dtype).min) instead of -inf, or guard the fully masked rows (give "
            "them one position, drop sequences that are all padding); clipping or a lower learning rate "
            "does nothing here. For 'overflow' and 'weights' the NaN is the end of "
            "a growth: clip the gradients, lower the learning rate and fix the init (clip-gradients, "
            "lower-lr, he-init, xavier-init). torch.autograd.detect_anomaly() shows the backward "
            "operation that produced the first NaN."),
        references=(GOODFELLOW_2016, PASCANU_2013),
    ),
    K.VANISHING_THROUGH_TIME: Entry(
        K.VANISHING_THROUGH_TIME.value, "Vanishing through time",
        "Early time steps of a recurrent layer receive almost no gradient, so it cannot learn "
        "long-range dependencies.",
        mechanism=(
            "A vanilla RNN computes h_t = f(W_hh h_(t-1) + W_xh x_t). The gradient that the loss at step T "
            "sends back to step k is a product of T - k factors W_hh^T diag(f'(a_t)): the same matrix, "
            "once per step, so depth is the sequence length. If the largest singular value of W_hh is "
            "below 1/gamma, where gamma bounds |f'| (gamma = 1 for tanh, 1/4 for sigmoid), every factor "
            "shrinks the gradient and the contribution of step k vanishes exponentially in T - k "
            "(a sufficient condition, Pascanu et al. 2013). The layer then learns only from the last few "
            "steps (Bengio et al. 1994)."),
        measured=_THROUGH_TIME_MEASURED,
        thresholds=(
            f"{_RNN_VANISH}\n"
            f"{_RNN_GATED}\n"
            "- W_hh's largest singular value below 1/gamma is reported as supporting evidence, not a rule: "
            "Pascanu et al. 2013's sufficient condition for vanishing.\n\n"
            f"{_RNN_ENDS}"),
        fix=(
            "Use a gated cell, nn.LSTM or nn.GRU, instead of nn.RNN (gated-rnn): the cell state gives the "
            "gradient a path whose factor is the forget gate, learned near 1. An orthogonal W_hh init "
            "(nn.init.orthogonal_) keeps the singular values at 1 at the start of training (Saxe et al. "
            "2014)."),
        references=(PASCANU_2013, BENGIO_1994, HOCHREITER_1997, CHO_2014, SAXE_2014),
    ),
    K.EXPLODING_THROUGH_TIME: Entry(
        K.EXPLODING_THROUGH_TIME.value, "Exploding through time",
        "The gradient grows step after step back through a recurrent layer.",
        mechanism=(
            "The gradient sent back through a recurrent layer is multiplied by W_hh^T diag(f'(a_t)) once "
            "per time step. If W_hh's largest singular value exceeds 1/gamma (gamma bounds |f'|: 1 for "
            "tanh), the product can grow exponentially with the distance to the loss: a necessary "
            "condition for explosion (Pascanu et al. 2013). A single long sequence then produces a step "
            "large enough to throw the weights off a cliff of the loss surface."),
        measured=_THROUGH_TIME_MEASURED,
        thresholds=(
            f"{_RNN_EXPLODE}\n"
            "- W_hh's largest singular value above 1/gamma is reported as supporting evidence, not a rule: "
            "Pascanu et al. 2013's necessary condition for explosion. For LSTM/GRU the forget gate, not "
            "W_hh, sets the gain along the cell state.\n\n"
            f"{_RNN_ENDS}"),
        fix=(
            "Clip the gradient norm (clip-gradients), the remedy Pascanu et al. 2013 propose: the step keeps "
            "its direction and a bounded length. A gated cell (LSTM/GRU) and an orthogonal W_hh init keep "
            "the per-step factor near 1."),
        references=(PASCANU_2013, BENGIO_1994, HOCHREITER_1997, SAXE_2014),
    ),
    K.SATURATED_ACTIVATION: Entry(
        K.SATURATED_ACTIVATION.value, "Saturated activation",
        "Most units of a sigmoid/tanh-like activation sit in the flat region, where the derivative is "
        "nearly zero.",
        mechanism=(
            "sigmoid'(x) = s(1 - s) is at most 0.25 and tanh'(x) = 1 - tanh(x)^2 at most 1; both tend to 0 "
            "in the tails. A unit whose pre-activation is large in magnitude sits in the flat region and "
            "passes almost no gradient back, to its weights or to the layers before it. Large "
            "pre-activations come from weights or inputs that are too large; Glorot & Bengio 2010 saw the "
            "top sigmoid layer of a deep net saturate at 0 early in training, which stalled learning."),
        measured=(
            "For every sigmoid-like activation fed by a layer (nn.Sigmoid, nn.Tanh, nn.Hardtanh, "
            "nn.Softsign, nn.Hardsigmoid, and the functional calls torch.sigmoid, torch.tanh, x.sigmoid(), "
            "F.hardtanh, F.softsign, ... seen during the forward), per unit (a feature, or a channel of a "
            "conv output), the share of its outputs in the flat region over every sample, position and "
            "probe batch. Flat region, from the output y: sigmoid outside [0.02, 0.98] and tanh |y| > 0.96 "
            "(DOMAIN.md; there the derivative is below ~8% of its peak: 0.0196 vs 0.25, 0.078 vs 1), "
            "softsign |y| > 0.72 (the same 8% level), hardtanh and hardsigmoid at their clamp values "
            "(derivative exactly 0). Reported on the layer that feeds the activation; when that layer's "
            "weight std is above the accepted init band (init_std.py), also its weight std and the "
            "Xavier std.\n\n"
            "Evidence keys: function, activation_module, saturated_units (share of units), "
            "saturated_fraction (share of all outputs), units, outputs_per_unit, activation_rms, "
            "weight_std, target_std."),
        thresholds=(
            "- a unit is saturated when more than half of its outputs lie in the flat region.\n"
            f"- the finding fires when more than {_num(_saturated.MOST_UNITS)} of the units are saturated: "
            "then most of the layer's gradient paths carry a derivative near 0 (flat regions from "
            "DOMAIN.md, after Glorot & Bengio 2010)."),
        fix=(
            "Use ReLU, GELU or another non-saturating activation in hidden layers (swap-activation). Where "
            "the sigmoid/tanh must stay (gates, bounded outputs), bring the pre-activations back into the "
            "steep region: Xavier init (xavier-init, recommended when the weights are above the band), or "
            "a normalization layer before the activation."),
        references=(GLOROT_2010, LECUN_1998, PENNINGTON_2017, IOFFE_2015),
    ),
    K.DEAD_RELU: Entry(
        K.DEAD_RELU.value, "Dead ReLU units",
        "Units that never fire on any probe sample pass exactly zero gradient.",
        mechanism=(
            "ReLU's derivative is 0 for negative pre-activations. A unit whose pre-activation is negative "
            "for every input never fires: its output is 0, the gradient to its incoming weights and bias "
            "is exactly 0, so nothing ever moves it back and it stays dead. Causes: a large negative bias, "
            "one large learning-rate step that pushed the weights, a poor init (Lu et al. 2020). A whole "
            "dead layer passes exactly zero gradient to everything before it."),
        measured=(
            "For every activation whose gradient is exactly 0 where its output is 0 (nn.ReLU, nn.ReLU6, "
            "nn.Hardswish, and F.relu / torch.relu / x.relu() called in a forward) fed by a layer: per "
            "unit (a feature, or a channel of a conv output), whether it produced a non-zero output on any "
            "sample and position of any probe batch. LeakyReLU, ELU, GELU, SiLU, ... always pass some "
            "gradient and are not checked. Reported on the layer that feeds the activation, with its bias "
            "mean and the pre-activation RMS.\n\n"
            "Evidence keys: function, activation_module, dead_fraction, dead_units, units, "
            "outputs_per_unit, activation_rms, bias_mean, negative_bias (1 when the bias alone keeps the "
            "units off)."),
        thresholds=(
            f"- the finding fires when more than {_num(_dead_relu.MAJORITY)} of the units never fire over "
            "the probe batches: at PyTorch's default init a bias-dominated layer has about half of its "
            "units dead by symmetry (a healthy corpus autoencoder measures 48%), so only a majority counts, "
            f"and only one that symmetry cannot explain: at least that many dead units out of the layer's "
            f"must have probability below {_num(_dead_relu.SIGNIFICANCE)} if each unit were dead with "
            "chance 1/2 (one-sided binomial test; 5 of 8 has 0.36), unless the whole layer is dead or a "
            "negative bias (below) visibly keeps the units off. "
            "Severity error when the whole layer is dead (nothing before it can learn), warning "
            "otherwise.\n"
            f"- negative bias: a bias mean below -{_num(_dead_relu.BIAS_SHARE)} x the pre-activation RMS, "
            "i.e. the bias alone pushes most units below zero; then he-init with a zero bias is "
            "recommended too."),
        fix=(
            "Use an activation with a non-zero slope for negative inputs, LeakyReLU, ELU or PReLU "
            "(swap-activation); when a negative bias keeps the units off, re-initialise with He init and "
            "a zero bias (he-init); and check the learning rate: a step that kills units is too large."),
        references=(HE_2015, MAAS_2013, CLEVERT_2016, LU_2020),
    ),
    K.INIT_SCALE: Entry(
        K.INIT_SCALE.value, "Mis-scaled initialisation",
        "The weight std is far from the std that preserves signal variance for the layer's fan-in and "
        "activation.",
        mechanism=(
            "A layer y = W x with zero-mean weights of variance s^2 multiplies the variance of its input "
            "by fan_in s^2 (times the activation's gain). The signal keeps its scale through depth only "
            "when s = gain / sqrt(fan_in): LeCun 1/sqrt(fan_in) for linear and SELU layers, Xavier/Glorot "
            "sqrt(2/(fan_in + fan_out)) for tanh/sigmoid (a compromise between the forward and the backward "
            "pass), He sqrt(2/fan_in) for ReLU, which zeroes half of its inputs. Too small a std makes "
            "activations and gradients shrink layer by layer (uniformly tiny gradients); too large makes "
            "them grow by ~sqrt(fan_in x gain) per layer, up to overflow."),
        measured=(
            "For every dense nn.Linear / nn.Conv layer that received gradient: the std of its weight "
            "against the variance-preserving std for its fan-in, fan-out and the activation that follows "
            "it, and whether the probe measured the consequence: a geometric run of the activation scale "
            "(forward) or of the output-gradient scale (backward) through the layer, in the direction the "
            "mismatch predicts (decay for too small, growth for too large). Embeddings, normalization and "
            f"recurrent layers are left to their own checks.\n\n{_STACK_MEASURED}\n\n"
            "Evidence keys: weight_std, target_std, scheme (he, xavier or lecun), default_std, band_low, "
            "band_high, std_ratio (weight_std / target_std), fan_in, fan_out, follower (the activation), "
            "direction ('too small' or 'too large'), activation_rms, output_grad_rms, and the stack_* keys."
            f"\n\n{_COLLAPSE_MEASURED}\n\n{_MARGIN} Here the number is the std and the threshold the "
            "band's edge."),
        thresholds=(
            f"- outside the band: {_INIT_BAND}\n"
            "- or inside it but below the variance-preserving std, for a layer that feeds an activation "
            "in a plain segment whose signal collapses (see vanishing): the band accepts PyTorch's "
            "default and LeCun's 1/fan_in because shallow nets train with them; the measured collapse "
            "shows this stack is too deep for them (He et al. 2015).\n"
            "- and the mismatch matters: the layer lies in a geometric run in the predicted direction; or "
            f"its std is more than {_num(_init_scale.GROSS)}x above the band, which no activation can "
            "absorb. A std below the band always needs the measured decay, because a deliberately small "
            "last layer or residual branch (GPT-2's 0.02 std, zero-init heads) is a sane design.\n"
            f"{_STACK_THRESHOLD}"),
        fix=(
            "Re-initialise with the exact variance-preserving std: He for ReLU-family layers (he-init), "
            "Xavier for tanh/sigmoid/linear layers and LeCun for SELU (xavier-init), with zero biases; "
            "the recommendation gives the std of every layer. Where the run persists in a deep plain "
            "stack, add normalization or residual connections (add-normalization, add-skip)."),
        references=(LECUN_1998, GLOROT_2010, HE_2015, KLAMBAUER_2017, PYTORCH_INIT, SAXE_2014),
    ),
    K.DIVERGENCE: Entry(
        K.DIVERGENCE.value, "Divergence over optimizer steps",
        "The loss rises step over step or turns NaN/Inf during the probe's optimizer steps.",
        mechanism=(
            "Gradient descent with a learning rate above the stability limit 2/L (L the local curvature "
            "of the loss) overshoots the minimum along the steepest direction: each step lands further "
            "away, the loss grows geometrically, then overflows to inf/NaN. Below that limit a step "
            "lowers the loss of the batch it was taken on (the descent lemma), so a healthy run falls or "
            "wobbles. The practical sign is the update/weight ratio, how much one step changes the "
            "weights relative to their norm: healthy around 1e-3, far above it the steps are too large."),
        measured=(
            "With --steps N (N optimizer steps on each probe batch; the weights are restored afterwards): "
            "the chronological loss trace (each probe batch, then the losses after the steps taken on "
            "it), the loss of each batch before its steps and after every one of them (same data, so "
            "only the step differs), the total gradient norm before any step, and the update/weight "
            "ratio |dw|/|w| of every step: lr |g|/|w| for SGD, the measured change for Adam/AdamW "
            "(whose step does not scale with |g|). Without --steps this finding cannot fire. The finding "
            "concerns the whole run (layer null). The init checks read the weights as built (the first "
            "batch, before any step), never weights these steps blew up.\n\n"
            "Evidence keys: rule (nonfinite, same-batch-rise, steady-rise or sustained-rise), losses, "
            "first_loss, last_loss, rises, first_nonfinite_at, same_batch_rise, rise_steps, optimizer, "
            "lr, steps, pre_divergence_steps, max_update_to_weight, max_update_layer, suggested_lr, "
            "suggested_lr_basis, initial_grad_norm."),
        thresholds=(
            "- the loss turns NaN/Inf during the steps after being finite at the first probe batch (a "
            "NaN already at the start is the nonfinite finding's); or\n"
            f"- compounded over consecutive steps, each judged on the batch it was taken on, the loss "
            f"rose more than {_num(_divergence.RISE)}x (the largest product of the per-step factors, "
            "from any low point): below the stability limit every factor is <= ~1 (the descent lemma), "
            "so batch-to-batch differences and dropout noise cannot add up to it, and it does not "
            "matter where the divergence starts relative to the batches; or\n"
            f"- the loss rises at each of the last {_divergence.RISES} transitions of the trace (all of "
            f"them if it is shorter, at least {_divergence.MIN_RISES}) and ends more than "
            f"{_num(_divergence.GROWTH)}x its starting value: one "
            "rise is batch-to-batch noise, several in a row are not, and the doubling keeps the small "
            "oscillations of a learning rate near the limit (which still trains) from counting "
            "(DOMAIN.md: 'loss grows step over step, then inf/NaN'); or\n"
            f"- every loss after the start (at least {_divergence.MIN_SUSTAINED}) is more than "
            f"{_num(_divergence.GROWTH)}x the start: the run jumped up and never came back, even if it "
            "wobbles up there (a healthy run that overshoots once comes back at the next step).\n"
            f"- the suggested learning rate brings the largest update/weight ratio of the steps taken "
            "before the loss rose (up to and including the first step that raised its batch's loss) to "
            f"{_num(_divergence.HEALTHY_UPDATE)}: lr x {_num(_divergence.HEALTHY_UPDATE)} / ratio, one "
            "significant figure (CS231n's ~1e-3; TheDeepChecker bounds log10 of the ratio between -4 "
            "and -1; the ratio is linear in lr at given weights), within lr x "
            f"{_num(_divergence.FLOOR)} and lr x {_num(_divergence.CUT)}: at most 10x lower than lr "
            "(DOMAIN.md's 'a learning rate 10x lower', also without a usable ratio); never below "
            "lr / 1000, where the ratio exceeds 1 (one step moved a layer by more than its own norm "
            "before anything diverged): that is gradients out of scale, e.g. an init too large, not a "
            "rate mis-set by some factor, and the init and clip fixes address it."),
        fix=(
            "Lower the learning rate (lower-lr) to the suggested one, or add warmup and a decay schedule; "
            "clip the gradient norm (clip-gradients) so one large gradient cannot throw the weights "
            "away. When an init-scale finding names the init as the cause, its fix (he-init / "
            "xavier-init) ranks first and these after it."),
        references=(CS231N, DEEPCHECKER, PASCANU_2013, GOODFELLOW_2016),
    ),
    K.NONFINITE_INPUT: Entry(
        K.NONFINITE_INPUT.value, "NaN/Inf in the input batch",
        "The batch or its target already holds NaN/Inf before the model runs.",
        mechanism=(
            "Data with missing values, a division by zero or a log of 0 in preprocessing, or corrupted "
            "records puts NaN/Inf into the batch. Every module that touches it produces NaN, so every "
            "NaN downstream is the data's fault, not the model's."),
        measured=(
            "Every floating-point tensor of the inputs and of the target of each probe batch is checked "
            "with isfinite before the model runs.\n\n"
            "Evidence keys: nonfinite_input (1 when any batch held NaN/Inf)."),
        thresholds=("- a single NaN/Inf element in an input or target tensor: no tolerance (IEEE 754 NaN "
                    "propagates through every operation)."),
        fix=(
            "Clean the data (check-inputs): find where the loader or the preprocessing produces NaN/Inf, "
            "drop or impute those samples, normalise features, and assert torch.isfinite on every batch "
            "while developing."),
        references=(GOODFELLOW_2016,),
    ),
    K.FP16_UNDERFLOW: Entry(
        K.FP16_UNDERFLOW.value, "fp16 gradient underflow",
        "Many gradient elements are below fp16's smallest normal number and would flush to zero without "
        "loss scaling.",
        mechanism=(
            "float16 represents normal numbers down to 2^-14 ~ 6.1e-5 and subnormals down to 2^-24 ~ 6.0e-8; "
            "anything smaller becomes 0. Gradients of small magnitude, common in the early layers and for "
            "activation gradients, lose precision below the normal range and vanish below the subnormal "
            "range when a model trains in fp16 (Micikevicius et al. 2018 found a large share of the "
            "activation gradients of an SSD detector below 2^-24). Loss scaling multiplies the loss, and "
            "so every gradient, by a large factor before backward and divides it out before the step."),
        measured=(
            f"{NOT_YET_MEASURED} What it will measure: the share of gradient elements below fp16's "
            "smallest normal (~6.1e-5) and smallest subnormal (~6.0e-8)."),
        thresholds=(
            "- not yet applied. The limits are fixed by the format (IEEE 754 binary16): 2^-14 ~ 6.1e-5 "
            "(smallest normal) and 2^-24 ~ 6.0e-8 (smallest subnormal)."),
        fix=(
            "Scale the loss (loss-scaling): torch.amp.GradScaler with torch.autocast, or train in bfloat16, "
            "which has float32's exponent range."),
        references=(MICIKEVICIUS_2018, IEEE_754, PYTORCH_AMP),
    ),
}

FIXES: dict[RecommendationId, Entry] = {
    R.SWAP_ACTIVATION: Entry(
        R.SWAP_ACTIVATION.value, "Swap the activation",
        "Use ReLU/GELU instead of saturating activations; LeakyReLU/ELU/PReLU for dead ReLUs.",
        mechanism=(
            "ReLU's derivative is exactly 1 for positive inputs, so it passes the gradient unchanged where "
            "sigmoid divides it by at least 4 and a saturated tanh by much more; GELU and SiLU are smooth "
            "variants with the same behaviour for large inputs. LeakyReLU, ELU and PReLU keep a non-zero "
            "slope for negative inputs, so a unit that stopped firing still receives gradient and can "
            "recover."),
        measured=(
            "Recommended for saturated-activation findings (a ReLU-family activation instead of the "
            "sigmoid/tanh), for dead-relu findings (LeakyReLU, ELU or PReLU instead of the ReLU), and for "
            "vanishing layers behind saturating activations. The reason quotes how many activations "
            "saturate or have dead units and the worst measured share."),
        thresholds=(
            "- the thresholds of saturated-activation and dead-relu (see gradcheck explain).\n"
            "- behind vanishing layers: every sigmoid, since sigmoid' <= 0.25 divides the gradient by >= 4 "
            "per layer (Glorot & Bengio 2010); a tanh-like activation when more than 0.5 of its outputs "
            "sit in the flat region (sigmoid outside [0.02, 0.98], tanh beyond 0.96 in magnitude; "
            "DOMAIN.md)."),
        fix=(
            "Replace the activation in hidden layers:\n\n"
            "    nn.ReLU()   # or nn.GELU(), in place of nn.Sigmoid()/nn.Tanh()\n"
            "    nn.LeakyReLU(0.01)   # or nn.ELU(), nn.PReLU(), in place of nn.ReLU() when units die\n\n"
            "Keep sigmoid/tanh where the output must be bounded (gates, probabilities)."),
        references=(GLOROT_2010, HE_2015, MAAS_2013, CLEVERT_2016, HENDRYCKS_2016),
    ),
    R.HE_INIT: Entry(
        R.HE_INIT.value, "He (Kaiming) init",
        "Re-initialise ReLU-family layers with std sqrt(2/fan_in).",
        mechanism=(
            "A ReLU zeroes half of its inputs, halving the variance of the signal; weights with variance "
            "2/fan_in double it back, so activations keep their scale in the forward pass and gradients in "
            "the backward pass, at any depth (He et al. 2015)."),
        measured=(
            "For layers followed by a ReLU-family activation. Recommended for init-scale findings (with "
            "the exact target std they measured), for vanishing or exploding layers whose weight std is "
            "outside the accepted band, for dead-relu findings whose negative bias keeps the units off "
            "(He init with a zero bias), and for the dense layers outside the band when a NaN/Inf came "
            "from an overflow. The reason quotes the measured weight std, its ratio to the target and the "
            "target std; the snippet sets every listed layer's std exactly."),
        thresholds=(f"- target sqrt(2/fan_in); {_INIT_BAND}"),
        fix=(
            "    # std = sqrt(2 / fan_in) for each layer; the recommendation lists every layer's value\n"
            "    for name, std in {\"0\": 0.177, \"2\": 0.125}.items():\n"
            "        layer = model.get_submodule(name)\n"
            "        nn.init.normal_(layer.weight, mean=0.0, std=std)  # = kaiming_normal_(nonlinearity=\"relu\")\n"
            "        if layer.bias is not None:\n"
            "            nn.init.zeros_(layer.bias)"),
        references=(HE_2015, PYTORCH_INIT),
    ),
    R.XAVIER_INIT: Entry(
        R.XAVIER_INIT.value, "Xavier (Glorot) init",
        "Re-initialise tanh/sigmoid/linear layers with std sqrt(2/(fan_in+fan_out)).",
        mechanism=(
            "For activations that are linear around 0 (tanh, and sigmoid up to its 1/4 slope), keeping the "
            "variance of activations needs Var(W) = 1/fan_in and keeping that of gradients 1/fan_out; "
            "Glorot & Bengio 2010 take the compromise 2/(fan_in + fan_out). SELU layers get LeCun's "
            "1/fan_in (Klambauer et al. 2017), which this recommendation covers too."),
        measured=(
            "For layers followed by tanh, sigmoid, softsign, hardtanh, SELU or no activation. Recommended "
            "for init-scale findings (with the exact target std they measured), for vanishing or exploding "
            "layers whose weight std is outside the accepted band, for saturated-activation findings whose "
            "feeding layer's weights are above the band (the init drives the units into saturation), and "
            "for the dense layers outside the band when a NaN/Inf came from an overflow. The reason "
            "quotes the measured weight std, its ratio to the target and the target std; the snippet sets "
            "every listed layer's std exactly."),
        thresholds=(f"- target sqrt(2/(fan_in + fan_out)) (sqrt(1/fan_in) for SELU, or when the fan-out "
                    f"is unknown); {_INIT_BAND}"),
        fix=(
            "    # std = sqrt(2 / (fan_in + fan_out)) for each layer; the recommendation lists every value\n"
            "    for name, std in {\"0\": 0.125, \"2\": 0.125}.items():\n"
            "        layer = model.get_submodule(name)\n"
            "        nn.init.normal_(layer.weight, mean=0.0, std=std)  # = nn.init.xavier_normal_\n"
            "        if layer.bias is not None:\n"
            "            nn.init.zeros_(layer.bias)"),
        references=(GLOROT_2010, LECUN_1998, KLAMBAUER_2017),
    ),
    R.ADD_NORMALIZATION: Entry(
        R.ADD_NORMALIZATION.value, "Add normalization",
        "BatchNorm after conv/linear layers; LayerNorm in sequence models.",
        mechanism=(
            "A normalization layer re-centres and re-scales every layer's activations, over the batch "
            "(BatchNorm, Ioffe & Szegedy 2015) or over the features of each sample (LayerNorm, Ba et al. "
            "2016), so their scale cannot drift layer by layer and the Jacobians stay near unit gain."),
        measured=(
            "Recommended when a vanishing, exploding or init-scale finding carries a geometric run of the "
            "gradient or activation scale through a stack (its stack_* evidence), no normalization layer "
            "runs inside the run, and the model has none. The snippet uses LayerNorm for sequence models "
            "(recurrent, attention, embedding, transformer layers), BatchNorm1d/2d/3d for convolutions, "
            "BatchNorm1d for MLPs. The reason describes the run: its per-layer factor, total and layers."),
        thresholds=f"{_STACK_THRESHOLD}",
        fix=(
            "    # after each layer of the stack:\n"
            "    nn.Sequential(layer, nn.BatchNorm1d(features), activation)\n"
            "    # nn.BatchNorm2d(channels) after convolutions, nn.LayerNorm(features) in sequence models\n\n"
            "A deep plain stack with BatchNorm still explodes at init (Yang et al. 2019): add residual "
            "connections too (add-skip)."),
        references=(IOFFE_2015, BA_2016, YANG_2019),
    ),
    R.ADD_SKIP: Entry(
        R.ADD_SKIP.value, "Add skip connections",
        "Residual blocks y = x + F(x) give the gradient a path with factor 1.",
        mechanism=(
            "In a residual block y = x + F(x) the Jacobian is I + dF/dx, so the gradient always has an "
            "identity path around F whatever the depth, and it neither vanishes nor explodes through the "
            "stack of blocks (He et al. 2016)."),
        measured=(
            "Recommended when a vanishing, exploding or init-scale finding carries a geometric run through "
            "a stack (its stack_* evidence) and the probe saw no residual add in the model (the input of a "
            "running module added to a result computed inside it). A residual stack resets the scale at "
            "every block, so it shows no geometric run and gets no such recommendation. The reason "
            "describes the run."),
        thresholds=f"{_STACK_THRESHOLD}",
        fix=(
            "    class Residual(nn.Module):\n"
            "        def __init__(self, block):\n"
            "            super().__init__()\n"
            "            self.block = block\n"
            "        def forward(self, x):\n"
            "            return x + self.block(x)"),
        references=(HE_2016, YANG_2019),
    ),
    R.GATED_RNN: Entry(
        R.GATED_RNN.value, "Use LSTM/GRU",
        "Gated recurrent layers keep gradient flowing across many time steps.",
        mechanism=(
            "An LSTM carries a cell state c_t = f_t * c_(t-1) + i_t * g_t: along it, the gradient is "
            "multiplied by the forget gate f_t, which the network learns to hold near 1, instead of by "
            "W_hh and tanh' at every step (Hochreiter & Schmidhuber 1997). A GRU's update gate plays the "
            "same role (Cho et al. 2014)."),
        measured=(
            "Recommended for vanilla nn.RNN / nn.RNNCell layers, and hand-written vanilla cells called in a "
            "loop (where the snippet is nn.GRUCell / nn.LSTMCell), with a vanishing-through-time finding. The "
            "reason quotes the ratio of the gradient reaching the far end of the sequence to its peak, "
            "and the effective horizon."),
        thresholds=(
            f"- the far end receives less than {_num(T.vanish_relative)} of the peak per-step gradient "
            "(Pascanu et al. 2013; AUTOTRAINER's 1e-3 ratio along time)."),
        fix=(
            "    self.rnn = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)\n"
            "    # or nn.GRU(...): the cell state gives the gradient a path with factor ~1"),
        references=(HOCHREITER_1997, CHO_2014, PASCANU_2013, BENGIO_1994),
    ),
    R.CLIP_GRADIENTS: Entry(
        R.CLIP_GRADIENTS.value, "Clip gradients",
        "torch.nn.utils.clip_grad_norm_ with a max_norm taken from measured healthy norms.",
        mechanism=(
            "When the total gradient norm exceeds max_norm, the whole gradient is rescaled to max_norm: the "
            "step keeps its direction but its length is bounded, so one exploding batch or sequence cannot "
            "throw the weights away (Pascanu et al. 2013). It treats the symptom; the cause may still need "
            "an init or architecture fix."),
        measured=(
            "Recommended for exploding and exploding-through-time findings, for NaN/Inf that came from an "
            "overflow (or weights already NaN/Inf), and for divergence over optimizer steps. The reason "
            "quotes the measured norm or growth and how max_norm was derived."),
        thresholds=(
            "- exploding layers and overflow: max_norm = 2 x the total norm (square root of the sum of "
            "squared grad_norm) of the layers that are not flagged and have grad/weight <= 1, rounded to "
            "one significant digit, so healthy steps pass untouched; 1.0, the common default, when no "
            "layer is healthy to calibrate on. Pascanu et al. 2013 take the threshold from the average "
            "norm over updates; the 2x leaves room for batch-to-batch variation.\n"
            "- divergence: max_norm = the total gradient norm before any optimizer step, rounded to one "
            "significant digit: every step stays that size however the loss grows."),
        fix=(
            "    loss.backward()\n"
            "    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=MAX_NORM)\n"
            "    optimizer.step()"),
        references=(PASCANU_2013, GOODFELLOW_2016),
    ),
    R.LOWER_LR: Entry(
        R.LOWER_LR.value, "Lower the learning rate",
        "A learning rate that brings the largest update/weight ratio near 1e-3.",
        mechanism=(
            "With SGD one step changes a layer's weights by lr x grad_norm, i.e. by lr x grad/weight "
            "relative to their norm. A healthy ratio is around 1e-3: far above it the steps overshoot, "
            "the loss rises and the weights grow until the values overflow."),
        measured=(
            "Recommended for exploding layers, for divergence over optimizer steps, and for NaN/Inf that "
            "came from an overflow (or weights already NaN/Inf). The reason quotes the measured ratio and "
            "the learning rate that brings it to ~1e-3."),
        thresholds=(
            "- exploding layers: lr = 1e-3 / (largest grad/weight), rounded to one significant digit: the "
            "SGD update/weight ratio then sits at the healthy ~1e-3 (CS231n; inside TheDeepChecker's "
            "bounds, log10 between -4 and -1).\n"
            f"- divergence: lr x {_num(_divergence.HEALTHY_UPDATE)} / (the largest update/weight ratio of the "
            "steps taken before the loss rose), one significant digit, within lr / 1000 (below it the "
            "ratio exceeds 1: gradients out of scale, not a rate off by some factor) and lr / 10; lr / 10 "
            "without a usable ratio (DOMAIN.md: 'a learning rate 10x lower').\n"
            "- overflow: lr / 10."),
        fix=(
            "    optimizer = torch.optim.SGD(model.parameters(), lr=NEW_LR)\n"
            "    # then warm up to it:\n"
            "    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 0.01, total_iters=1000)"),
        references=(CS231N, DEEPCHECKER),
    ),
    R.WEIGHT_DECAY: Entry(
        R.WEIGHT_DECAY.value, "Weight decay",
        "An L2 penalty (AdamW weight_decay) keeps weights from growing until gradients explode.",
        mechanism=(
            "Weight decay shrinks every weight by a factor (1 - lr x lambda) each step, so the weight norm "
            "cannot grow without bound; with growing weights the layer Jacobians grow too, until the "
            "gradients explode (Krogh & Hertz 1992). With Adam, decoupled decay (AdamW) applies it as "
            "intended (Loshchilov & Hutter 2019)."),
        measured=(
            f"{NOT_YET_RECOMMENDED} It is meant for exploding gradients whose cause is weights that "
            "grow over training, which needs the weight norm over optimizer steps (--steps)."),
        thresholds=("- not yet applied: the rule will compare the weight norm before and after the probe's "
                    "optimizer steps."),
        fix=(
            "    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)"),
        references=(KROGH_1992, LOSHCHILOV_2019),
    ),
    R.GUARD_NONFINITE: Entry(
        R.GUARD_NONFINITE.value, "Guard the unsafe operation",
        "clamp, eps, log1p, logsumexp or a stable loss where NaN/Inf first appears.",
        mechanism=(
            "log, sqrt and division are undefined or infinite at zero and for negative values, sqrt's "
            "derivative is infinite at 0, and exp overflows float32 above x ~ 88.7. Clamping the argument "
            "into the valid range, adding a small eps, or using the fused stable form (log_softmax, "
            "logsumexp, F.cross_entropy on logits, log1p) removes the NaN/Inf at its source."),
        measured=(
            "Recommended for a nonfinite finding whose cause is an unsafe op in the forward or its "
            "derivative in the backward (or whose origin could not be named), when the batch itself was "
            "finite. It names the origin module and the op, and the snippet is chosen for that op (log, "
            "sqrt/rsqrt, division, exp, pow; a general one otherwise). For a softmax over a fully masked "
            "row (cause 'all-masked') the snippet masks with torch.finfo(dtype).min or guards the rows "
            "that mask every position (nn.MultiheadAttention's key_padding_mask, an sdpa attn_mask)."),
        thresholds=(
            "- the nonfinite finding's cause is 'unsafe-op' or 'backward': the op's inputs were below "
            "sqrt(dtype max), so the op, not an earlier growth, produced the NaN/Inf (see gradcheck "
            "explain nonfinite); or 'all-masked': a softmax row with every position masked."),
        fix=(
            "    x = torch.log(x.clamp_min(1e-6))        # instead of torch.log(x)\n"
            "    x = torch.sqrt(x.clamp_min(0) + 1e-12)  # instead of torch.sqrt(x)\n"
            "    y = a / b.clamp_min(1e-8)               # instead of a / b\n"
            "    y = torch.exp(x.clamp(max=80.0))        # float32 exp overflows above ~88.7\n"
            "    loss = F.cross_entropy(logits, target)  # instead of log(softmax(...))"),
        references=(GOODFELLOW_2016,),
    ),
    R.CHECK_INPUTS: Entry(
        R.CHECK_INPUTS.value, "Check the inputs",
        "Clean or normalise data whose batches or targets hold NaN/Inf.",
        mechanism=(
            "A NaN in the data turns every activation, the loss and every gradient it reaches into NaN; no "
            "change to the model helps. The fix belongs in the loader or the preprocessing."),
        measured="Recommended for a nonfinite-input finding: a probe batch or its target held NaN/Inf.",
        thresholds="- a single NaN/Inf element in an input or target tensor.",
        fix=(
            "    assert torch.isfinite(inputs).all() and torch.isfinite(target).all()\n"
            "    inputs = torch.nan_to_num(inputs)  # or drop the bad samples / fix the loader"),
        references=(GOODFELLOW_2016,),
    ),
    R.LOSS_SCALING: Entry(
        R.LOSS_SCALING.value, "Loss scaling",
        "torch.amp.GradScaler (or bf16) so fp16 gradients do not underflow.",
        mechanism=(
            "Multiplying the loss by a factor S multiplies every gradient by S, shifting small gradients "
            "into fp16's representable range; the optimizer step divides by S again. GradScaler picks S "
            "dynamically, lowering it when an overflow appears (Micikevicius et al. 2018). bfloat16 has "
            "float32's exponent range and needs no scaling."),
        measured=(
            f"{NOT_YET_RECOMMENDED} It is meant for fp16-underflow findings, which this version does not "
            "measure yet."),
        thresholds=("- not yet applied: fp16's smallest normal 2^-14 ~ 6.1e-5 and smallest subnormal "
                    "2^-24 ~ 6.0e-8 (IEEE 754 binary16) will set them."),
        fix=(
            "    scaler = torch.amp.GradScaler(\"cuda\")\n"
            "    with torch.autocast(\"cuda\", dtype=torch.float16):\n"
            "        loss = loss_fn(model(inputs), target)\n"
            "    scaler.scale(loss).backward()\n"
            "    scaler.step(optimizer)\n"
            "    scaler.update()"),
        references=(MICIKEVICIUS_2018, PYTORCH_AMP, IEEE_754),
    ),
}

RELATED: dict[FindingKind, tuple[RecommendationId, ...]] = {
    K.VANISHING: (R.SWAP_ACTIVATION, R.HE_INIT, R.XAVIER_INIT, R.ADD_NORMALIZATION, R.ADD_SKIP),
    K.EXPLODING: (R.CLIP_GRADIENTS, R.LOWER_LR, R.HE_INIT, R.XAVIER_INIT, R.ADD_NORMALIZATION,
                  R.ADD_SKIP, R.WEIGHT_DECAY),
    K.NONFINITE: (R.GUARD_NONFINITE, R.CLIP_GRADIENTS, R.LOWER_LR, R.HE_INIT, R.XAVIER_INIT),
    K.VANISHING_THROUGH_TIME: (R.GATED_RNN,),
    K.EXPLODING_THROUGH_TIME: (R.CLIP_GRADIENTS,),
    K.SATURATED_ACTIVATION: (R.SWAP_ACTIVATION, R.XAVIER_INIT),
    K.DEAD_RELU: (R.SWAP_ACTIVATION, R.HE_INIT),
    K.INIT_SCALE: (R.HE_INIT, R.XAVIER_INIT, R.ADD_NORMALIZATION, R.ADD_SKIP),
    K.DIVERGENCE: (R.LOWER_LR, R.CLIP_GRADIENTS),
    K.NONFINITE_INPUT: (R.CHECK_INPUTS,),
    K.FP16_UNDERFLOW: (R.LOSS_SCALING,),
}
"""Which recommendations each finding kind can justify (DOMAIN.md "Fixes, and when each is the
right one"). `gradcheck explain` derives both directions from this table; a test checks that
fixes.recommend never emits a recommendation for a finding kind not listed here."""


def related_fixes(kind: FindingKind) -> tuple[RecommendationId, ...]:
    return RELATED[kind]


def justifying_findings(rid: RecommendationId) -> tuple[FindingKind, ...]:
    """The finding kinds that can justify `rid`, in FindingKind order."""
    return tuple(kind for kind in FindingKind if rid in RELATED[kind])


def _normalise(entry_id: str) -> str:
    return entry_id.strip().lower().replace("_", "-")


def lookup(entry_id: str) -> Entry | None:
    """The entry for a finding kind or recommendation id (case-insensitive, _ or -), or None."""
    wanted = _normalise(entry_id)
    for entry in (*FINDINGS.values(), *FIXES.values()):
        if entry.id == wanted:
            return entry
    return None


def all_ids() -> list[str]:
    return [e.id for e in (*FINDINGS.values(), *FIXES.values())]


def get(entry_id: str) -> Entry:
    """The entry for `entry_id`; a UserError with a did-you-mean and where to find the ids."""
    entry = lookup(entry_id)
    if entry is not None:
        return entry
    close = suggest(entry_id)
    hint = f" (did you mean '{close}'?)" if close else ""
    raise UserError(f"unknown finding kind or recommendation id '{entry_id}'{hint}; "
                    "see `gradcheck list checks` and `gradcheck list fixes` for the ids")


def suggest(entry_id: str) -> str | None:
    """The closest known id to a mistyped one, or None."""
    close = difflib.get_close_matches(_normalise(entry_id), all_ids(), n=1, cutoff=0.6)
    return close[0] if close else None
