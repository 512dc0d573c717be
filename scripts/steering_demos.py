"""Steering demos on the default model (SmolLM2-135M-Instruct), with the numbers docs/steering.md quotes.

    python scripts/steering_demos.py sentiment              # CAA vector: reading accuracy and sweep
    python scripts/steering_demos.py twohop                 # swap the intermediate country of a two-hop prompt
    python scripts/steering_demos.py concept --sae out/small/sae-smollm2-l15   # clamp a concept latent

Each writes `<out>/<demo>.json` (and a PNG for the sweeps); `--out` defaults to out/steering.
Greedy decoding throughout, so reruns give the same text.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

import mechscope
from mechscope.core.files import claim_output_dir, figure_png, write_bytes, write_json
from mechscope.core.provenance import provenance
from mechscope.features.steering import (
    Add,
    Clamp,
    Swap,
    generate,
    mean_difference,
    projection_accuracy,
    read_activations,
    reading_vector,
    steering,
    typical_norm,
)
from mechscope.features.steering.concepts import concept_latents
from mechscope.features.steering.sweep import (
    NEUTRAL_TEXTS,
    Concept,
    keyword_incidence,
    plot_sweep,
    steering_sweep,
)

# -- sentiment -----------------------------------------------------------------------------------
SUBJECTS = ["The movie", "The food", "My day", "The hotel", "The concert", "The book", "The service", "Our trip",
            "The game", "The party", "The lecture", "The weather"]
POSITIVE = ["wonderful", "great", "delightful", "excellent", "lovely", "amazing", "fantastic", "pleasant"]
NEGATIVE = ["terrible", "awful", "horrible", "dreadful", "miserable", "disappointing", "boring", "unpleasant"]
POSITIVE_WORDS = ["love", "great", "wonderful", "amazing", "beautiful", "best", "fantastic", "enjoy", "happy",
                  "excellent", "perfect", "delicious", "fun"]
NEGATIVE_WORDS = ["terrible", "awful", "bad", "worst", "horrible", "boring", "hate", "disappoint", "sad",
                  "poor", "unfortunately", "annoying"]


def sentiment_pairs(subjects: list[str], adjectives: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    pos = [f"{s} was {p}." for s in subjects for p, _ in adjectives]
    neg = [f"{s} was {n}." for s in subjects for _, n in adjectives]
    return pos, neg


def text_accuracy(v: torch.Tensor, train_pos: torch.Tensor, train_neg: torch.Tensor, pos: torch.Tensor,
                  neg: torch.Tensor) -> float:
    """Held-out accuracy of `x . v > t` as 'positive', with `t` the midpoint of the training class means' projections."""
    threshold = float((train_pos @ v).mean() + (train_neg @ v).mean()) / 2
    return float(torch.cat([(pos @ v) > threshold, (neg @ v) <= threshold]).double().mean())


def next_word_preference(model: Any, prompts: list[str], interventions: list) -> float:
    """Mean over prompts of log P(positive word) - log P(negative word) for the next token."""
    good = [model.to_single_token(" " + w) for w in ("good", "great", "wonderful", "amazing", "excellent")]
    bad = [model.to_single_token(" " + w) for w in ("bad", "terrible", "awful", "boring", "horrible")]
    batch = model.tokenize(prompts)
    with torch.no_grad(), steering(model, interventions):
        logits = model(batch)
    last = logits[torch.arange(len(prompts)), batch.last_positions.to(logits.device)].float().log_softmax(-1)
    return float((last[:, good].logsumexp(-1) - last[:, bad].logsumexp(-1)).mean())


def demo_sentiment(model: Any, out: Path, force: bool) -> dict[str, Any]:
    adjectives = list(zip(POSITIVE, NEGATIVE, strict=True))
    train = sentiment_pairs(SUBJECTS[:8], adjectives[:5])  # 40 pairs
    test = sentiment_pairs(SUBJECTS[8:], adjectives[5:])  # 12 held-out pairs: new subjects and new adjectives
    gen = torch.Generator().manual_seed(0)
    layers = []
    for layer in range(2, model.cfg.n_layers, 3):
        hook = f"blocks.{layer}.hook_resid_post"
        rv = reading_vector(model, *train, hook)
        caa = mean_difference(model, *train, hook)
        train_pos, train_neg = read_activations(model, train[0], hook), read_activations(model, train[1], hook)
        pos, neg = read_activations(model, test[0], hook), read_activations(model, test[1], hook)
        row: dict[str, Any] = {"layer": layer}
        randoms = [torch.randn(model.cfg.d_model, generator=gen) for _ in range(200)]
        for name, vectors in (("reading_vector", [rv.vector]), ("mean_difference", [caa.vector]), ("random", randoms)):
            texts = sorted(text_accuracy(v, train_pos, train_neg, pos, neg) for v in vectors)
            pairs = sorted(projection_accuracy(v, pos, neg) for v in vectors)
            row[name] = {"text_accuracy": sum(texts) / len(texts), "pair_accuracy": sum(pairs) / len(pairs)}
            if name == "random":
                row[name]["text_accuracy_p95"] = texts[int(0.95 * len(texts)) - 1]
                best = row["reading_vector"]["pair_accuracy"]
                row[name]["share_of_pairs_at_least_reading_vector"] = sum(a >= best for a in pairs) / len(pairs)
        layers.append(row)
        r = row["random"]
        print(f"layer {layer:2d}: held-out text accuracy: reading vector {row['reading_vector']['text_accuracy']:.3f}, "
              f"CAA {row['mean_difference']['text_accuracy']:.3f}, random directions mean {r['text_accuracy']:.3f} "
              f"(95th percentile {r['text_accuracy_p95']:.3f}); pair accuracy: reading vector "
              f"{row['reading_vector']['pair_accuracy']:.3f}, random mean {r['pair_accuracy']:.3f} "
              f"({r['share_of_pairs_at_least_reading_vector']:.2f} of random directions do as well)")
    steer_layer = 12
    hook = f"blocks.{steer_layer}.hook_resid_post"
    direction = mean_difference(model, *train, hook)
    site_norm = typical_norm(model, hook, list(NEUTRAL_TEXTS))
    prompts = ["I think the movie was", "My day at work was", "The food at the restaurant was",
               "Honestly, the trip was", "The new phone is", "Our neighbours are", "The weekend was",
               "The book I read last month was"]
    coefs = [-0.2, -0.1, 0.1, 0.2, 0.3]
    result = steering_sweep(model, prompts, lambda c: [Add(direction, c, site_norm=site_norm)], coefs,
                            concept=Concept(keywords=POSITIVE_WORDS), max_new_tokens=30, baseline=True)
    rows = []
    for p in result.points:
        negative = keyword_incidence(p.texts, NEGATIVE_WORDS)
        added = [] if p.coef is None else [Add(direction, p.coef, site_norm=site_norm)]
        preference = next_word_preference(model, prompts, added)
        rows.append({"coef": p.coef, "positive_words": p.keyword_incidence, "negative_words": negative,
                     "next_word_preference": preference, "perplexity": p.perplexity, "kl_neutral": p.kl_neutral,
                     "texts": p.texts})
        name = "unsteered" if p.coef is None else f"coef {p.coef:+.1f}"
        print(f"{name:>10}: log P(good words) - log P(bad words) next {preference:+.2f}  positive words "
              f"{p.keyword_incidence:.2f}  negative words {negative:.2f}  ppl {p.perplexity:6.1f}  KL {p.kl_neutral:.3f}")
        for text in p.texts[:2]:
            print(f"{'':12}{text[:110]!r}")
    data = {"reading_accuracy": layers, "steer_layer": steer_layer, "site_norm": site_norm,
            "direction_norm": direction.norm, "sweep": rows, "sweep_result": result.to_dict(),
            "n_train_pairs": len(train[0]), "n_test_pairs": len(test[0]), "provenance": provenance(model, seed=0)}
    write_json(out / "sentiment.json", data, force)
    fig = plot_sweep(result, f"sentiment CAA at {hook}, coefficient in units of the site norm ({site_norm:.1f})")
    twin = fig.axes[0].twinx()  # the next-word preference: a finer measure than keywords in 8 generations
    swept = [r for r in rows if r["coef"] is not None]
    twin.plot([r["coef"] for r in swept], [r["next_word_preference"] for r in swept], "s--", color="C4",
              label="log P(good words) - log P(bad words), next token")
    twin.set_ylabel("next-token preference (nats)")
    twin.legend(fontsize=7, loc="lower right")
    fig.set_size_inches(13.5, 3.6)
    fig.tight_layout()
    write_bytes(out / "sentiment_sweep.png", figure_png(fig), force)
    return data


# -- two-hop ---------------------------------------------------------------------------------------
COUNTRIES = {  # city -> (country, language)
    "Paris": ("France", "French"), "Berlin": ("Germany", "German"), "Rome": ("Italy", "Italian"),
    "Madrid": ("Spain", "Spanish"), "Tokyo": ("Japan", "Japanese"), "Moscow": ("Russia", "Russian"),
    "Lisbon": ("Portugal", "Portuguese"), "Athens": ("Greece", "Greek"),
}
CONTEXTS = ["I travelled to {}", "She was born in {}", "The president of {}", "We moved to {}",
            "The history of {}", "The map of {}", "He studied in {}", "The economy of {}"]
TEMPLATE = "The official language of the country where {} is located is"


def demo_twohop(model: Any, out: Path, force: bool, sae_path: str | None) -> dict[str, Any]:
    languages = {city: model.to_single_token(" " + lang) for city, (_, lang) in COUNTRIES.items()}
    correct = []
    with torch.no_grad():
        for city in COUNTRIES:
            top = int(model(TEMPLATE.format(city))[0, -1].argmax())
            ok = top == languages[city]
            print(f"{TEMPLATE.format(city)!r} -> {model.tokenizer.decode([top])!r} ({'right' if ok else 'wrong'})")
            if ok:
                correct.append(city)
    layers = [4, 8, 12, 16]
    directions = {layer: {c: None for c in correct} for layer in layers}
    for layer in layers:
        hook = f"blocks.{layer}.hook_resid_post"
        acts = {c: read_activations(model, [t.format(COUNTRIES[c][0]) for t in CONTEXTS], hook).mean(0)
                for c in correct}
        directions[layer] = acts
    gen = torch.Generator().manual_seed(0)
    swaps, flipped, control_flipped, total = [], {layer: 0 for layer in layers}, {layer: 0 for layer in layers}, 0
    with torch.no_grad():
        for source in correct:
            prompt = TEMPLATE.format(source)
            position = model.to_str_tokens(prompt).index(" " + source)
            for target in correct:
                if target == source:
                    continue
                total += 1
                for layer in layers:
                    hook = f"blocks.{layer}.hook_resid_post"
                    vector = directions[layer][target] - directions[layer][source]
                    with steering(model, [Add(vector, 1.0, where=[position], hook_name=hook)]):
                        top = int(model(prompt)[0, -1].argmax())
                    noise = torch.randn(model.cfg.d_model, generator=gen)
                    noise = noise / noise.norm() * vector.norm()
                    with steering(model, [Add(noise, 1.0, where=[position], hook_name=hook)]):
                        control = int(model(prompt)[0, -1].argmax())
                    flipped[layer] += top == languages[target]
                    control_flipped[layer] += control == languages[target]
                    swaps.append({"source": source, "target": target, "layer": layer,
                                  "answer": model.tokenizer.decode([top]), "hit": top == languages[target],
                                  "random_control_answer": model.tokenizer.decode([control])})
    for layer in layers:
        print(f"layer {layer:2d}: country swap at the city token gives the target language in {flipped[layer]}/{total} "
              f"pairs (random direction of the same norm: {control_flipped[layer]}/{total})")
    example_prompt = TEMPLATE.format("Paris")
    position = model.to_str_tokens(example_prompt).index(" Paris")
    vector = directions[8]["Berlin"] - directions[8]["Paris"] if "Berlin" in correct and "Paris" in correct else None
    examples = {}
    if vector is not None:
        for name, interventions in (("unsteered", []),
                                    ("France->Germany at ' Paris', layer 8",
                                     [Add(vector, 1.0, where=[position], hook_name="blocks.8.hook_resid_post")])):
            examples[name] = generate(model, example_prompt, interventions, max_new_tokens=12).texts[0]
            print(f"{name}: {example_prompt!r} ->{examples[name]!r}")
    latent_swap = _twohop_latent_swap(model, sae_path, correct, languages) if sae_path else None
    data = {"template": TEMPLATE, "correct": correct, "wrong": [c for c in COUNTRIES if c not in correct],
            "pairs": total, "flipped": flipped, "random_control_flipped": control_flipped, "swaps": swaps,
            "examples": examples, "latent_swap": latent_swap, "provenance": provenance(model, seed=0)}
    write_json(out / "twohop.json", data, force)
    return data


def _twohop_latent_swap(model: Any, sae_path: str, correct: list[str], languages: dict[str, int]) -> dict[str, Any]:
    """The swap with SAE latents: the 3 latents most active at the city token turned down, the target country's
    3 most specific latents (country contexts against the other countries) turned up to a multiple of their peak."""
    from mechscope.dictionaries import load_dictionary
    from mechscope.dictionaries.splice import sae_features

    sae = load_dictionary(sae_path)
    latents, peaks = {}, {}
    for city in correct:
        others = [t.format(COUNTRIES[c][0]) for c in correct if c != city for t in CONTEXTS[:3]]
        best = concept_latents(model, sae, [t.format(COUNTRIES[city][0]) for t in CONTEXTS], others, n=3)
        latents[city], peaks[city] = [b.latent for b in best], max(b.concept_peak for b in best)
    hits, rows = {}, []
    with torch.no_grad():
        for multiple in (1, 3, 6, 10):
            hits[multiple] = 0
            for source in correct:
                prompt = TEMPLATE.format(source)
                position = model.to_str_tokens(prompt).index(" " + source)
                city_latents = [int(i) for i in sae_features(model, sae, prompt)[0, position].topk(3).indices]
                for target in correct:
                    if target == source:
                        continue
                    swap = Swap(sae, down=city_latents, up=latents[target], value=multiple * peaks[target],
                                where=[position])
                    with steering(model, [swap]):
                        top = int(model(prompt)[0, -1].argmax())
                    hits[multiple] += top == languages[target]
                    rows.append({"source": source, "target": target, "multiple": multiple,
                                 "answer": model.tokenizer.decode([top])})
            total = len(correct) * (len(correct) - 1)
            print(f"SAE latent swap at the city token ({sae.cfg.hook_name}), up latents at {multiple}x their peak: "
                  f"target language in {hits[multiple]}/{total}")
    return {"latents": latents, "peaks": peaks, "hits_by_multiple": hits, "rows": rows}


# -- concept latent ("Golden Gate" style) ---------------------------------------------------------
CONCEPT_TEXTS = ["Open the file and read its contents.", "The directory contains several files.",
                 "Write the data to a file on disk.", "Close the file when you are done.",
                 "Save the document in a new folder.", "The path points to a file that does not exist."]
BASELINE_TEXTS = ["The meeting was moved to Thursday afternoon.", "She opened the window and sat down.",
                  "The train leaves the station at seven.", "Water boils at a lower temperature at altitude.",
                  "Add the flour and stir until smooth.", "He bought a new pair of shoes yesterday."]
FILE_WORDS = ["file", "folder", "directory", "disk", "path"]


def demo_concept(model: Any, out: Path, force: bool, sae_path: str) -> dict[str, Any]:
    from mechscope.dictionaries import load_dictionary

    sae = load_dictionary(sae_path)
    best = concept_latents(model, sae, CONCEPT_TEXTS, BASELINE_TEXTS, n=5)
    for b in best:
        print(f"latent {b.latent}: score {b.score:.2f} (peak on concept texts {b.concept_peak:.2f}, "
              f"on baseline texts {b.baseline_peak:.2f})")
    latent = best[0].latent
    prompts = ["I went to the", "My favourite thing is", "Yesterday I saw", "The best part of the day is"]
    result = steering_sweep(model, prompts, lambda v: [Clamp(sae, latent, v)], [5.0, 10.0, 15.0, 20.0, 30.0],
                            concept=Concept(keywords=FILE_WORDS, sae=sae, latent=latent), max_new_tokens=30,
                            baseline=True)
    for p in result.points:
        name = "unsteered" if p.coef is None else f"clamp {p.coef:g}"
        print(f"{name:>10}: keywords {p.keyword_incidence:.2f}  latent fires {p.latent_incidence:.2f} "
              f"(mean {p.latent_mean:.3f})  ppl {p.perplexity:7.1f}  KL {p.kl_neutral:.3f}")
        for text in p.texts[:2]:
            print(f"{'':12}{text[:110]!r}")
    data = {"concept_latents": [b._asdict() for b in best], "latent": latent, "sweep": result.to_dict(),
            "provenance": provenance(model, seed=0)}
    write_json(out / "concept.json", data, force)
    fig = plot_sweep(result, f"clamping latent {latent} ('files') of the layer-15 TopK SAE")
    write_bytes(out / "concept_sweep.png", figure_png(fig), force)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", choices=["sentiment", "twohop", "concept"])
    parser.add_argument("--sae", default=None, help="dictionary folder (concept demo; twohop adds a latent swap)")
    parser.add_argument("--out", default="out/steering")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    out = claim_output_dir(args.out, force=args.force)
    model = mechscope.load_model()
    if args.demo == "sentiment":
        demo_sentiment(model, out, args.force)
    elif args.demo == "twohop":
        demo_twohop(model, out, args.force, args.sae)
    else:
        if not args.sae:
            parser.error("the concept demo needs --sae PATH")
        demo_concept(model, out, args.force, args.sae)
    print(json.dumps({"written": str(out)}))


if __name__ == "__main__":
    main()
