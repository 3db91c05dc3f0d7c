"""Mirrors modules/prompt_parser.py's conditioning containers and their reconstruction per step.

ScheduledPromptConditioning(end_at_step, cond): one entry of a prompt's schedule;
ComposableScheduledPromptConditioning(schedules, weight): one AND-part of a prompt;
MulticondLearnedConditioning.batch: per image, one entry per AND-part of its prompt (the cond);
the uncond is a list per image of its schedule. reconstruct_multicond_batch -> (conds_list,
tensor): per image [(row in tensor, weight)], and the stacked cond rows in image order (shorter
AND-parts padded by repeating their last token, stack_conds). reconstruct_cond_batch -> the
uncond tensor. Left out: parsing prompts into schedules (the stand-in's processing makes one
schedule entry per prompt) and SDXL's dict conds."""
from collections import namedtuple

import torch

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules: list[ScheduledPromptConditioning] = schedules
        self.weight: float = weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape: tuple = shape
        self.batch: list[list[ComposableScheduledPromptConditioning]] = batch


def _schedule_index(schedules, current_step):
    """No A1111 counterpart: the loop over a schedule that both reconstruct functions inline."""
    target_index = 0
    for current, entry in enumerate(schedules):
        if current_step <= entry.end_at_step:
            target_index = current
            break
    return target_index


def reconstruct_cond_batch(c: list[list[ScheduledPromptConditioning]], current_step):
    param = c[0][0].cond
    res = torch.zeros((len(c),) + param.shape, device=param.device, dtype=param.dtype)
    for i, cond_schedule in enumerate(c):
        res[i] = cond_schedule[_schedule_index(cond_schedule, current_step)].cond
    return res


def stack_conds(tensors):
    token_count = max([x.shape[0] for x in tensors])
    for i in range(len(tensors)):
        if tensors[i].shape[0] != token_count:
            last_vector = tensors[i][-1:]
            last_vector_repeated = last_vector.repeat([token_count - tensors[i].shape[0], 1])
            tensors[i] = torch.vstack([tensors[i], last_vector_repeated])
    return torch.stack(tensors)


def reconstruct_multicond_batch(c: MulticondLearnedConditioning, current_step):
    param = c.batch[0][0].schedules[0].cond
    tensors, conds_list = [], []
    for composable_prompts in c.batch:
        conds_for_batch = []
        for composable_prompt in composable_prompts:
            target_index = _schedule_index(composable_prompt.schedules, current_step)
            conds_for_batch.append((len(tensors), composable_prompt.weight))
            tensors.append(composable_prompt.schedules[target_index].cond)
        conds_list.append(conds_for_batch)
    return conds_list, stack_conds(tensors).to(device=param.device, dtype=param.dtype)
