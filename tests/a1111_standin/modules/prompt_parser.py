"""Mirrors modules/prompt_parser.py's conditioning containers.

MulticondLearnedConditioning.batch: per image, one entry per AND-part of its prompt;
reconstruct_multicond_batch -> (conds_list, tensor): per image [(row in tensor, weight)], and
the stacked cond rows in image order. (Prompt scheduling is not imitated: one schedule entry.)"""
import torch


class ComposableScheduledPromptConditioning:
    def __init__(self, cond, weight=1.0):
        self.cond, self.weight = cond, weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape, self.batch = shape, batch


def reconstruct_multicond_batch(c: MulticondLearnedConditioning, current_step):
    conds_list, tensors = [], []
    for composable_prompts in c.batch:
        conds_for_batch = []
        for composable_prompt in composable_prompts:
            conds_for_batch.append((len(tensors), composable_prompt.weight))
            tensors.append(composable_prompt.cond)
        conds_list.append(conds_for_batch)
    token_count = max(t.shape[0] for t in tensors)
    for i, t in enumerate(tensors):  # A1111 pads shorter AND-parts by repeating the last token
        if t.shape[0] != token_count:
            tensors[i] = torch.vstack([t, t[-1:].repeat([token_count - t.shape[0], 1])])
    return conds_list, torch.stack(tensors)


def reconstruct_cond_batch(c, current_step):
    return c
