#!/usr/bin/env python
"""Write cosyml's own test sets into ``eval/`` in the CV3-Eval layout.

    python scripts/make_eval_sets.py [--out eval] [--speaker-dir examples/toy_speaker]

Every sentence below was written for this project (none is taken from CV3-Eval or Seed-TTS-eval).
Prompt audio: two zh and two en clips of the toy speaker (wav + .lab transcript), copied once into
``zero_shot/zh/waveform`` and ``zero_shot/en/waveform``; the other subsets point at them with paths
relative to the set root in CV3's own style (``zero_shot//zh/waveform/prompt_zh_1.wav``), which keeps
``eval/`` small. Swap in your own speaker's clips with ``--speaker-dir`` and ``--zh-prompts/--en-prompts``.

The in-domain speaker-SFT set is not here: it is built from the user's dev split at evaluation time
(``cosyml.evaluation.testset.write_sft_subset``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from cosyml.evaluation.testset import SubsetLine, read_test_set, write_subset

ZERO_SHOT_ZH = [
    "今年春天的雨水比往年多，山上的茶叶长得格外好。",
    "图书馆将从下周一起延长开放时间，晚上十点才闭馆。",
    "他把旧自行车修好以后，每天骑着它去河边钓鱼。",
    "研究人员发现，这种海藻在低温环境中仍然能够生长。",
    "请大家排好队，依次从左边的通道进入会场。",
    "外婆做的红烧肉肥而不腻，我每次回家都要吃两碗饭。",
    "这座石桥建于几百年前，至今仍是附近村民出行的必经之路。",
    "天气预报说明天有大风，出门记得多穿一件外套。",
    "小区门口新开了一家面包店，早上总是排着长队。",
    "这部纪录片讲述了候鸟每年迁徙数千公里的故事。",
    "会议推迟到下午三点，请各位相互转告。",
    "她花了整整三年时间，终于完成了这部长篇小说。",
    "地铁二号线的末班车时间调整为晚上十一点半。",
    "孩子们在操场上放风筝，笑声传得很远。",
    "这家博物馆收藏了上千件古代陶器和青铜器。",
    "只要坚持锻炼，身体状况一定会慢慢好起来。",
]

ZERO_SHOT_EN = [
    "The museum will stay open late on Thursdays throughout the summer.",
    "She planted tomatoes along the fence and watered them every morning.",
    "Researchers measured how quickly the glacier retreated over a decade.",
    "Please leave your umbrella by the door before entering the gallery.",
    "The old lighthouse was converted into a small guesthouse last year.",
    "He practiced the piano for an hour before heading to work.",
    "Our train was delayed because of a signal problem near the station.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "A quiet library is the perfect place to finish a long report.",
    "The river flooded the lower fields after three days of heavy rain.",
    "Volunteers cleaned the beach and collected several bags of plastic.",
    "The committee will announce its decision at the end of the month.",
    "My neighbor repairs vintage radios in a workshop behind his house.",
    "Scientists believe the comet will be visible without a telescope.",
    "The bakery on the corner sells fresh bread until noon.",
    "Traveling by ferry takes longer, but the view is worth it.",
]

EXPRESSIVE_ZH = [  # six questions, then six emotional lines
    "你真的打算一个人去爬那座雪山吗？",
    "明天的考试到底几点开始？",
    "这么晚了，你怎么还没睡觉？",
    "我们是不是在哪里见过面？",
    "你能帮我看看这道题哪里做错了吗？",
    "要不要一起去楼下的咖啡馆坐坐？",
    "太好了！我们终于赢得了这场比赛！",
    "我再也不想听到这个消息了，真让人心碎。",
    "你怎么能把我的日记拿给别人看，太过分了！",
    "哇，这份礼物也太让人惊喜了吧！",
    "别害怕，一切都会好起来的，我一直陪着你。",
    "唉，等了一整天，他还是没有打电话来。",
]

EXPRESSIVE_EN = [
    "Are you sure you locked the front door?",
    "What time does the last bus leave tonight?",
    "Why didn't anyone tell me about the meeting?",
    "Could you show me how this machine works?",
    "Have you ever seen the northern lights?",
    "Is this seat taken, or can I sit here?",
    "We did it! I can't believe we actually won!",
    "I'm so sorry, I never meant to hurt you.",
    "How dare you read my messages without asking!",
    "Oh wow, this is the best surprise ever!",
    "Don't worry, everything is going to be fine.",
    "I waited all night, and nobody came.",
]

# (instruction in CosyVoice2's instruct2 form, target text)
INSTRUCT_ZH = [
    ("用四川话说这句话<|endofprompt|>", "今天的火锅也太辣了，不过吃起来真过瘾。"),
    ("用粤语说这句话<|endofprompt|>", "我们明天早上一起去饮早茶吧。"),
    ("用上海话说这句话<|endofprompt|>", "外面下雨了，出门记得带把伞。"),
    ("用东北话说这句话<|endofprompt|>", "这天儿也太冷了，赶紧进屋暖和暖和。"),
    ("用天津话说这句话<|endofprompt|>", "这个煎饼果子做得真地道。"),
    ("用开心的语气说这句话<|endofprompt|>", "我拿到了心仪公司的录用通知！"),
    ("用伤心的语气说这句话<|endofprompt|>", "那只陪伴我十年的小狗昨天走了。"),
    ("用生气的语气说这句话<|endofprompt|>", "我已经提醒你三次了，你还是忘了。"),
    ("请用很慢的语速说这句话<|endofprompt|>", "请仔细听好接下来的每一个步骤。"),
    ("请用很快的语速说这句话<|endofprompt|>", "快点快点，火车马上就要开了。"),
]

INSTRUCT_EN = [
    ("用开心的语气说这句话<|endofprompt|>", "I finally got the keys to my new apartment!"),
    ("用伤心的语气说这句话<|endofprompt|>", "The old theater on the main street closed for good."),
    ("用生气的语气说这句话<|endofprompt|>", "You promised you would call, and you never did."),
    ("请用很慢的语速说这句话<|endofprompt|>", "Breathe in slowly, and hold it for a moment."),
    ("请用很快的语速说这句话<|endofprompt|>", "Grab your bag, the taxi is already outside."),
    ("用温柔的语气说这句话<|endofprompt|>", "Sleep well, little one, the stars are watching over you."),
]

CROSS_TO_EN = [  # spoken by the zh prompt voice
    "The market opens early on weekends, so we should leave by seven.",
    "My grandmother taught me how to fold paper cranes.",
    "This path leads to a waterfall hidden behind the hills.",
    "Please remember to bring your passport to the airport.",
    "The lanterns looked beautiful reflected on the lake.",
    "I have been learning to make noodles from scratch.",
    "The hotel room has a window facing the mountains.",
    "Turn left at the pharmacy and walk for five minutes.",
    "We shared a pot of tea and talked until midnight.",
    "The city built a new park where the old factory used to be.",
]

CROSS_TO_ZH = [  # spoken by the en prompt voice
    "周末我们打算去郊外露营，顺便看看星星。",
    "这家餐厅的饺子皮薄馅大，味道非常好。",
    "请把窗户关上，外面的风越来越大了。",
    "我正在学习书法，每天练习半个小时。",
    "火车穿过隧道以后，眼前是一片金黄的稻田。",
    "他说话的声音很轻，但每个字都很清楚。",
    "这座城市的夜景在江边看最漂亮。",
    "明天早上我们在公园门口集合。",
    "她送给我一本关于植物的图画书。",
    "新学期开始了，同学们都换上了新校服。",
]

HARD_ZH = [
    # tongue twisters (n/l, s/sh, h/f contrasts)
    "老牛拉着六辆绿篓车，路过柳树林来到刘家楼。",
    "施先生十点四十四分在石桥边数了四十四只柿子。",
    "灰飞机和黑飞机绕着花房飞了好几圈。",
    "山上三棵桑树，桑树上三只松鼠正在睡觉。",
    "南边来了个兰老汉，拿着篮子去卖蓝莲花。",
    # numbers, dates, times, units (no number normalisation in scoring: the ASR must match the text)
    "订单号是20240517，总金额为3865.5元。",
    "会议定在2025年3月8日下午2点45分举行。",
    "这栋楼高128米，共有36层，每层约1200平方米。",
    "气温从零下5度回升到了12.5度。",
    # mixed Chinese and English
    "我昨天用iPhone下载了一个新的App，体验还不错。",
    "这次的project deadline是下周五，大家抓紧时间。",
    "他在GitHub上提交了一个pull request，修复了三个bug。",
    "请把PPT发到我的Email，我晚上再看。",
    "我们用Python和PyTorch训练了一个TTS模型。",
]

HARD_EN = [
    "Six slim sailors slowly sorted sixty silver shells.",
    "Brisk brown bakers bring bright bread baskets back.",
    "Fresh fried fish frequently fills Fred's fridge.",
    "Clever clerks quickly clip crisp copper coins.",
    "The invoice total is $4,372.18, due on March 14th, 2026.",
    "Flight 2718 departs from gate 31B at 6:45 p.m.",
    "The population grew from 1.2 million to 3.75 million in 40 years.",
    "Call extension 5093 between 9 and 11 a.m.",
    "The NASA engineers tested the GPS receiver in the lab.",
    "Worcestershire sauce and quinoa salad were on the menu.",
    "She read the thoroughly thought-through thesis three times.",
    "The model's WER dropped from 12% to 7.5% after fine-tuning.",
]


def copy_prompts(speaker_dir: Path, names: list[str], dest: Path, lang: str) -> list[tuple[str, str]]:
    """Copy ``<name>.wav`` into ``dest``; return (file name, transcript from ``<name>.lab``) per prompt."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i, name in enumerate(names, start=1):
        wav, lab = speaker_dir / f"{name}.wav", speaker_dir / f"{name}.lab"
        if not wav.is_file() or not lab.is_file():
            raise SystemExit(f"{wav} or {lab}: not found; pass --speaker-dir with wav + .lab clips")
        target = f"prompt_{lang}_{i}.wav"
        shutil.copyfile(wav, dest / target)
        out.append((target, lab.read_text(encoding="utf-8").strip()))
    return out


def lines_for(
    tag: str, texts: list[str], prompts: list[tuple[str, str]], prompt_dir: str, instructs: list[str] | None = None
) -> list[SubsetLine]:
    """Target lines with prompts assigned round-robin; ``prompt_dir`` is relative to the set root."""
    out = []
    for i, text in enumerate(texts, start=1):
        wav, transcript = prompts[(i - 1) % len(prompts)]
        out.append(
            SubsetLine(
                utt=f"{tag}_{i:03d}",
                text=text,
                prompt_text=transcript,
                prompt_wav=f"{prompt_dir}/waveform/{wav}",
                instruct=instructs[i - 1] if instructs else None,
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("eval"))
    parser.add_argument("--speaker-dir", type=Path, default=Path("examples/toy_speaker"))
    parser.add_argument("--zh-prompts", nargs="+", default=["vo_zh_001", "vo_zh_007"])
    parser.add_argument("--en-prompts", nargs="+", default=["vo_en_008", "vo_en_006"])
    args = parser.parse_args()
    out: Path = args.out
    for sub in ("zero_shot", "expressive", "instruct", "cross_lingual", "hard"):
        shutil.rmtree(out / sub, ignore_errors=True)
    zh = copy_prompts(args.speaker_dir, args.zh_prompts, out / "zero_shot" / "zh" / "waveform", "zh")
    en = copy_prompts(args.speaker_dir, args.en_prompts, out / "zero_shot" / "en" / "waveform", "en")
    zh_dir, en_dir = "zero_shot//zh", "zero_shot//en"  # CV3 style: relative to the set root, literal "//"

    sets = {
        "zero_shot/zh": lines_for("ood_zh", ZERO_SHOT_ZH, zh, zh_dir),
        "zero_shot/en": lines_for("ood_en", ZERO_SHOT_EN, en, en_dir),
        "expressive/zh": lines_for("expr_zh", EXPRESSIVE_ZH, zh, zh_dir),
        "expressive/en": lines_for("expr_en", EXPRESSIVE_EN, en, en_dir),
        "instruct/zh": lines_for("inst_zh", [t for _, t in INSTRUCT_ZH], zh, zh_dir, [i for i, _ in INSTRUCT_ZH]),
        "instruct/en": lines_for("inst_en", [t for _, t in INSTRUCT_EN], en, en_dir, [i for i, _ in INSTRUCT_EN]),
        "cross_lingual/to_en": lines_for("x_to_en", CROSS_TO_EN, zh, zh_dir),
        "cross_lingual/to_zh": lines_for("x_to_zh", CROSS_TO_ZH, en, en_dir),
        "hard/hard_zh": lines_for("hard_zh", HARD_ZH, zh, zh_dir),
        "hard/hard_en": lines_for("hard_en", HARD_EN, en, en_dir),
    }
    for name, lines in sets.items():
        write_subset(out / name, lines)
    for subset in read_test_set(out):  # read back: every line must be usable
        if subset.problems:
            raise SystemExit(f"{subset.name}: {subset.problems[0].detail}")
        print(f"{subset.name:<22} {subset.language}  {len(subset.items):>3} utterances")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
