from tflm.models import Seq2SeqBackbone, TransformerBackbone
from tflm.training.flops import non_embedding_parameters, training_flops_per_token


def test_gpt2_small_flops_match_the_published_formula():
    # GPT-2 124M: 85M non-embedding parameters (12 layers x 7.08M + final norm).
    backbone = TransformerBackbone(vocabulary_size=50257, num_layers=12, num_heads=12,
                                   hidden_dim=768, intermediate_dim=3072,
                                   max_sequence_length=1024, causal=True, norm_first=True)
    n = non_embedding_parameters(backbone)
    per_layer = 4 * 768 * 768 + 4 * 768 + 2 * 768 * 3072 + 3072 + 768 + 4 * 768
    assert n == 12 * per_layer + 2 * 768
    flops = training_flops_per_token(backbone, 1024)
    assert flops == 6 * (n + 768 * 50257) + 12 * 12 * 12 * 64 * 1024
    # About 0.87 GFLOP per token (nanoGPT quotes ~6 * 124M + attention).
    assert 0.8e9 < flops < 0.9e9


def test_untied_output_is_counted_once():
    kwargs = dict(vocabulary_size=100, num_layers=1, num_heads=2, hidden_dim=8,
                  intermediate_dim=16, max_sequence_length=8, causal=True)
    tied = training_flops_per_token(TransformerBackbone(**kwargs), 8)
    untied = training_flops_per_token(TransformerBackbone(**kwargs, tie_embeddings=False), 8)
    assert tied == untied


def test_an_encoder_decoder_counts_both_halves_and_cross_attention():
    backbone = Seq2SeqBackbone(vocabulary_size=100, num_layers=2, num_decoder_layers=1,
                               num_heads=2, hidden_dim=8, intermediate_dim=16,
                               max_sequence_length=8)
    params = sum(int(v.numpy().size) for v in backbone.trainable_variables)
    # One shared token table (also the tied output), two learned position tables.
    n = params - 100 * 8 - 2 * 8 * 8 + 8 * 100
    attention = 12 * (2 + 2 * 1) * 2 * 4 * 8  # encoder self; decoder self and cross
    assert training_flops_per_token(backbone, 8) == 6 * n + attention


def test_the_projection_counts_only_the_positions_a_task_projects():
    from tflm.experiment import load_experiment
    from tflm.tasks import get_task

    kwargs = dict(vocabulary_size=100, num_layers=1, num_heads=2, hidden_dim=8,
                  intermediate_dim=16, max_sequence_length=8)
    backbone = TransformerBackbone(**kwargs)
    every = training_flops_per_token(backbone, 8)
    # A masked LM projects its predicted positions only; a classifier none.
    assert training_flops_per_token(backbone, 8, 0.25) == every - 6 * 8 * 100 * 0.75
    assert training_flops_per_token(backbone, 8, 0.0) == every - 6 * 8 * 100
    untied = TransformerBackbone(**kwargs, tie_embeddings=False)
    assert training_flops_per_token(untied, 8, 0.25) == training_flops_per_token(backbone, 8, 0.25)
    bert = load_experiment("configs/tiny_bert.yaml", "data.max_predictions_per_seq=20")
    assert get_task(bert).projected_share == 20 / 128
    assert get_task(load_experiment("configs/tiny_gpt.yaml")).projected_share == 1.0
    assert get_task(load_experiment("configs/tiny_seq2seq.yaml")).projected_share == 1.0
    assert get_task(load_experiment("configs/finetune_reviews.yaml")).projected_share == 0.0
