"""``workbench data pull``: download the published benchmark files, checked by sha256.

For users who are online. Every file comes from its authors' public repository at a fixed
commit (the one recorded for the project's shared data copy), as a raw GitHub URL
``{base_url}/{repo}/{commit}/{path in the repository}``; its sha256 and size are pinned in
:data:`REGISTRY` below (hashes only: the project ships no copy of the data). A download is
written to a temporary file beside its target and renamed into place only when its sha256
matches, so an interrupted or corrupted download never leaves a partial file where the
loaders would read it. Files already present with the right hash are skipped, so a rerun
only fetches what is missing.

>>> from workbench.evals.data_pull import pull
>>> report = pull(only=["crows_pairs"])                           # doctest: +SKIP
>>> report[["path", "status"]]                                    # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable

import pandas as pd

from workbench.common.data_dir import resolve_data_dir
from workbench.common.errors import WorkbenchError
from workbench.common.files import atomic_path, sha256_file

DEFAULT_BASE_URL = "https://raw.githubusercontent.com"
CHUNK = 1 << 16


class DataPullError(WorkbenchError):
    """A download failed or did not match its pinned sha256; nothing was left in its place."""


# (path in the data directory, path in the source repository, sha256, bytes), per dataset.
# Source repositories and commits: the data README's MANIFEST.json. TruthfulQA's recorded
# source is a vendored copy of sylinrl/TruthfulQA (byte-identical files under TruthfulQA/).
REGISTRY: dict[str, dict] = {
    "crows_pairs": {
        "repo": "nyu-mll/crows-pairs",  # MANIFEST source: nyu-mll/crows-pairs
        "commit": "8aaac11c485473159ec9328a65253a5be9a479dc",
        "files": [
            ("crows_pairs/README.md", "README.md", "bf96decb803c46ae0cf5ae065ac374ccead2bff74c62a258621ffbed5db1925b", 4603),
            ("crows_pairs/crows_pairs_anonymized.csv", "data/crows_pairs_anonymized.csv", "dfb36986ce0502abbaf7055b9176da3d08d48e07df1251991b5dfbcbceab9d0c", 437764),
            ("crows_pairs/data_README.md", "data/README.md", "da5b1bc1be2755c4a2daf5f4a95da49431b2d546408cc3f954bc8fe6bbe76bbc", 2892),
            ("crows_pairs/prompts.csv", "data/prompts.csv", "3585b8a6a64b474b9f83e6e4bc5b15a13203eb8fe9470cfc30ac3f4222c5fb0e", 181204),
        ],
    },
    "bbq": {
        "repo": "nyu-mll/BBQ",  # MANIFEST source: nyu-mll/BBQ
        "commit": "bea11bd97d79217245b5871acd247b9d6eb24598",
        "files": [
            ("bbq/Age.jsonl", "data/Age.jsonl", "46e805b3fc2d8cbd26eeb8e8430d98cf7b2dc9c83574ff3674e8ce4f0fca2a60", 3091834),
            ("bbq/Disability_status.jsonl", "data/Disability_status.jsonl", "375d40d9b71f056150264445ec189b13934998f3f49a1e311aa7578eb3b45e5f", 1336984),
            ("bbq/LICENSE", "LICENSE", "95df2e9564862e51d69683a899b6dcc8218d577057bdf67322880769ff85f29e", 18649),
            ("bbq/Nationality.jsonl", "data/Nationality.jsonl", "a583e74666aec0341ded8aa3983e7cad694eb24de72c254d28b2df3035720090", 2900040),
            ("bbq/Physical_appearance.jsonl", "data/Physical_appearance.jsonl", "e48d7e13508565f4801574e611043470c25c95a0a62af3699cb5ee7cb02608fb", 1347476),
            ("bbq/README.md", "README.md", "9b98910f37b3c1b0dc12170ece772847e37bbb514e3158f5cfce18aa8cc703b8", 5603),
            ("bbq/Religion.jsonl", "data/Religion.jsonl", "cb9555f9f3454a52cd2df85956b59bd7fcca5aa922c8527693b1164d08417616", 1118728),
            ("bbq/Sexual_orientation.jsonl", "data/Sexual_orientation.jsonl", "2c71036b9e7584fe589c42aef32c1a42bc01b9a5e9b1b8704342630cdb08cefd", 729010),
        ],
    },
    "winogender": {
        "repo": "rudinger/winogender-schemas",  # MANIFEST source: rudinger/winogender-schemas
        "commit": "1c7f8b481ad8a234b41e9f76a424d6e856e13f7f",
        "files": [
            ("winogender/LICENSE", "LICENSE", "22756588705091904ca7903df15eb7f6ed45a11a7eec0783567295e9502e9316", 1072),
            ("winogender/README.md", "README.md", "ad7b0fbabe9411dae3590ab4ddd35866db676cff8714c0a25b647d7736ae2e15", 2601),
            ("winogender/all_sentences.tsv", "data/all_sentences.tsv", "bd69da16bf228cb8df63fd0843aec2d8b5c36a7f21bf8c7b168bcc83932556c8", 83644),
            ("winogender/occupations-stats.tsv", "data/occupations-stats.tsv", "3f7f37c16381a70571356982ea7fe613ac700ad04a6d3b19b9f2be18248df567", 1578),
            ("winogender/templates.tsv", "data/templates.tsv", "496f2e2dc77296bcebcdd8865a8dc5715ce22b772de9abb5f531d5b3114c48a0", 14903),
        ],
    },
    "truthfulqa": {
        "repo": "SimarBhatiaSB7/TruthX",  # MANIFEST source: SimarBhatiaSB7/TruthX (vendored copy of sylinrl/TruthfulQA, path TruthfulQA/)
        "commit": "9f9e3d00dd0114d8adda7a86757f01671be59d5f",
        "files": [
            ("truthfulqa/LICENSE", "TruthfulQA/LICENSE", "1eb85fc97224598dad1852b5d6483bbcf0aa8608790dcc657a5a2a761ae9c8c6", 11558),
            ("truthfulqa/README.md", "TruthfulQA/README.md", "249deab8a6130f799900878970a26688a5322062f62e23d84487a5db1da6af1e", 10437),
            ("truthfulqa/TruthfulQA.csv", "TruthfulQA/TruthfulQA.csv", "967b82fb1fb6274e4971c6c80caa9d04f844c512b1033c146f26c78270cd384b", 477048),
            ("truthfulqa/mc_task.json", "TruthfulQA/data/mc_task.json", "75b84d5cc8f0e287c055db1857808e734ea53ade8ee68aad2d007f38896330a8", 771566),
            ("truthfulqa/v0/TruthfulQA.csv", "TruthfulQA/data/v0/TruthfulQA.csv", "f4fcc4a841d4474c46a4719c295c6df5f12eef14c187fbb9637a29e70d9ece00", 444541),
            ("truthfulqa/v0/mc_task.json", "TruthfulQA/data/v0/mc_task.json", "131e6f4156297bee09b38279e2fa847e4359c200504eca99ea3fab4b2d3a6144", 726323),
        ],
    },
    "winobias": {
        "repo": "uclanlp/corefBias",  # MANIFEST source: uclanlp/corefBias (WinoBias/wino/data)
        "commit": "0bce984dd081bbc10b0622f326727a024c607895",
        "files": [
            ("winobias/LICENSE", "LICENSE", "fdc813af7e33d0d7852c742a8a3983934d3c1c770014062246883c194c363830", 1090),
            ("winobias/anti_stereotyped_type1.txt.dev", "WinoBias/wino/data/anti_stereotyped_type1.txt.dev", "a4e0ebae344e78b56f657a42e8ae684b9db7747d177c5e7149c0907ebb7f3bf6", 32782),
            ("winobias/anti_stereotyped_type1.txt.test", "WinoBias/wino/data/anti_stereotyped_type1.txt.test", "331db5bd74bfefebf146a60b67645152a4a1991570d2a56f57154103ac361dd2", 34778),
            ("winobias/anti_stereotyped_type2.txt.dev", "WinoBias/wino/data/anti_stereotyped_type2.txt.dev", "763ad829ad724f9a85ead689ba8ca69072020cb1238def6210f0fc6a47b97e59", 30875),
            ("winobias/anti_stereotyped_type2.txt.test", "WinoBias/wino/data/anti_stereotyped_type2.txt.test", "336571ac1ea8c06cd2aba8e5dd2bd98e00acc0c48da3e4ec5ec7e54eb2633a8f", 31769),
            ("winobias/female_occupations.txt", "WinoBias/wino/data/female_occupations.txt", "693bff12286c2c1d46c7d4d45a44a631574710c30b39c1a3001bb7bdebb44ed8", 177),
            ("winobias/male_occupations.txt", "WinoBias/wino/data/male_occupations.txt", "6b82d88847b69d56d207a0c396e9830b031890de585e916e6b4e9bc50672657e", 169),
            ("winobias/pro_stereotyped_type1.txt.dev", "WinoBias/wino/data/pro_stereotyped_type1.txt.dev", "dd55a0d220fe4c0ceb63dd4648223fb4fe1a58d5ad95c116a002ad24b0e292a5", 32786),
            ("winobias/pro_stereotyped_type1.txt.test", "WinoBias/wino/data/pro_stereotyped_type1.txt.test", "db7838907238a758eeb5779e48f38c013b892910d6fe864456c59f04245c6689", 34820),
            ("winobias/pro_stereotyped_type2.txt.dev", "WinoBias/wino/data/pro_stereotyped_type2.txt.dev", "8f0250de723cea9328e3eaf7169e07936f01aa5909ce7aa580db66eb803f4e86", 30884),
            ("winobias/pro_stereotyped_type2.txt.test", "WinoBias/wino/data/pro_stereotyped_type2.txt.test", "ea1c1fd94fa612e3cc44d7fa3cc4cb76021bb63fdf94f9826f430051e9052438", 31749),
            ("winobias/readme.md", "WinoBias/wino/readme.md", "adecfe62f9863e683da5d8c01dd8ce08443fda44da08d7d78a70855ea9e6d852", 1400),
        ],
    },
    "toxigen": {
        "repo": "microsoft/TOXIGEN",  # MANIFEST source: microsoft/TOXIGEN (prompts/)
        "commit": "01517e814639e0334c920a3c502036c8158aac87",
        "files": [
            ("toxigen/LICENSE.txt", "LICENSE.txt", "56f1dd6be56e0afd33c2c070fa73448fb0eddcbcd60a55a53a8a26a0f6b4c205", 3539),
            ("toxigen/prompts/hate_asian_1k.txt", "prompts/hate_asian_1k.txt", "0504967034122b691c16dbef10db3acb16492808ecc66d8cd2b2ae87454fd655", 499093),
            ("toxigen/prompts/hate_bisexual_1k.txt", "prompts/hate_bisexual_1k.txt", "09a5b6995d0cd0ba940ae9f9d67e8db1451352dcf99ee273315efc34915fc1e3", 443794),
            ("toxigen/prompts/hate_black_1k.txt", "prompts/hate_black_1k.txt", "29ef85c5610d77a3a4bb050826ffb6e124ee48e11f5b63d34b29d616ef2ee1c3", 741295),
            ("toxigen/prompts/hate_chinese_1k.txt", "prompts/hate_chinese_1k.txt", "7f99029bad4f71caff707787d6799d1d654fee140f22418691d1244e81ed2b21", 380934),
            ("toxigen/prompts/hate_immigrant_1k.txt", "prompts/hate_immigrant_1k.txt", "bebb38d8786f498ca2153f965cdfba14e0490d5216781091106e5ac8ebbe0574", 281309),
            ("toxigen/prompts/hate_jewish_1k.txt", "prompts/hate_jewish_1k.txt", "f5bdf83ef8fd32435241cc5fcfc337c0a57bcf64eb7fb4aa3c8fe15eb86f1fd2", 569538),
            ("toxigen/prompts/hate_latino_1k.txt", "prompts/hate_latino_1k.txt", "60988864d728cc7b1644a72419181efc1d82b2342f636a5e76f34805e4a88537", 704000),
            ("toxigen/prompts/hate_lgbtq_1k.txt", "prompts/hate_lgbtq_1k.txt", "7fb7da0d4ad1a485824111ab60f6030f01dd92dbc9342c76534c78faec061a16", 573075),
            ("toxigen/prompts/hate_mental_disability_1k.txt", "prompts/hate_mental_disability_1k.txt", "5a71f51bf998c5111b5dd6d0b7d7edbaa445f27defbc1fdb798dd920974ad3e2", 476620),
            ("toxigen/prompts/hate_mexican_1k.txt", "prompts/hate_mexican_1k.txt", "2fad743ced369e4a280165b7ea909f8cb30921840cbe5f9f454243cf9e4dcfd5", 671444),
            ("toxigen/prompts/hate_middle_east_1k.txt", "prompts/hate_middle_east_1k.txt", "29ffcca6defd3e4f2edd2237417c7617a3c7380de8f9c6cf13d8c087fa595223", 422551),
            ("toxigen/prompts/hate_muslim_1k.txt", "prompts/hate_muslim_1k.txt", "aaa18a9bf72928f71cf3d0d8d4dfa298faeb015a8580f5c7e21ef7afaae3241a", 421760),
            ("toxigen/prompts/hate_native_american_1k.txt", "prompts/hate_native_american_1k.txt", "01c2077f1007268ca11588d08f909ed9c01178148205ae417618d276227b9bbc", 476000),
            ("toxigen/prompts/hate_physical_disability_1k.txt", "prompts/hate_physical_disability_1k.txt", "8cada46239a52a741faf47677d1ffbfa06dc31d3e480a03935a5aec89ea02dee", 409643),
            ("toxigen/prompts/hate_trans_1k.txt", "prompts/hate_trans_1k.txt", "6188dfd52082e552230a1332e2bf83a23e8410c5f353d32dca79f259c8daf8b8", 581554),
            ("toxigen/prompts/hate_women_1k.txt", "prompts/hate_women_1k.txt", "eecdf3006847c267b9399045ce2fe002f884fe5b682dbef450f3477d7bb24497", 385583),
            ("toxigen/prompts/neutral_asian_1k.txt", "prompts/neutral_asian_1k.txt", "a5f0c58ae51dc8771d1779009ffc3017c5071c529b01f260600fa96c164ceb44", 611895),
            ("toxigen/prompts/neutral_bisexual_1k.txt", "prompts/neutral_bisexual_1k.txt", "8a3391bb9a178295f619c3e92ba9bc177225c392d90ac9f4ab5702c4140d6e51", 911612),
            ("toxigen/prompts/neutral_black_1k.txt", "prompts/neutral_black_1k.txt", "8e1da39bf32818c14156f4de32ef6a35f701e1737540dafb02bdf8eb03206a6b", 853769),
            ("toxigen/prompts/neutral_chinese_1k.txt", "prompts/neutral_chinese_1k.txt", "aad50dde2f68d75804e44b939a700b8e37ef93a152cae1a045f8881f89c7e982", 408062),
            ("toxigen/prompts/neutral_immigrant_1k.txt", "prompts/neutral_immigrant_1k.txt", "1807799ed9e45c428792da879f83d874e3f589c63b6fd746716fafe2b117c3d4", 338243),
            ("toxigen/prompts/neutral_jewish_1k.txt", "prompts/neutral_jewish_1k.txt", "c804dc98c4a7d90105a9848a66cde4eb05db9a63a8d2668387e46bba90c28380", 645674),
            ("toxigen/prompts/neutral_latino_1k.txt", "prompts/neutral_latino_1k.txt", "7fad9d0003e54e5f18c1dafb7e21b2295dae5bb7290e9c649eadb7a450b80957", 466000),
            ("toxigen/prompts/neutral_lgbtq_1k.txt", "prompts/neutral_lgbtq_1k.txt", "7cefb606353cfff8c9ee4af9b2044f039e698dc8117b7c9414dd02dedca51ba9", 910319),
            ("toxigen/prompts/neutral_mental_disability_1k.txt", "prompts/neutral_mental_disability_1k.txt", "8f513551d7c86c3fd6df5d0a4bb8fd831c45c24d917d69ab3a61f1a984edf3d0", 552905),
            ("toxigen/prompts/neutral_mexican_1k.txt", "prompts/neutral_mexican_1k.txt", "e16aaa8a4606b3bf08139b9c91067cb63d620dd5a3a94e63b8ebc3f4198b1597", 479603),
            ("toxigen/prompts/neutral_middle_east_1k.txt", "prompts/neutral_middle_east_1k.txt", "a4f23dfbe5bd0dec6a2018b2fe1ca9805d2a7ca76791da5300c72e6bcdabcdf9", 411319),
            ("toxigen/prompts/neutral_muslim_1k.txt", "prompts/neutral_muslim_1k.txt", "d378bc96f388cef1be42954246b67955dfe3d42cfcbf2ffc2924856c2fb933cd", 487659),
            ("toxigen/prompts/neutral_native_american_1k.txt", "prompts/neutral_native_american_1k.txt", "8affc8490fb2fac8ad72041cce775fc9442ebea95a64a7a2274825e1231ef265", 582993),
            ("toxigen/prompts/neutral_physical_disability_1k.txt", "prompts/neutral_physical_disability_1k.txt", "30ae4d6774054136a635cd9097dd4fe530ec2f407932f775e8093afa795cff8e", 454497),
            ("toxigen/prompts/neutral_women_1k.txt", "prompts/neutral_women_1k.txt", "dfad74fee637cd35415fc9b3a0b8d27d799e5613da5d9be0fdf93774fe813208", 390963),
        ],
    },
    "decodingtrust": {
        "repo": "AI-secure/DecodingTrust",  # MANIFEST source: AI-secure/DecodingTrust (data/toxicity/user_prompts, data/stereotype/dataset)
        "commit": "161ae8321ced62f45fcd9ceb412e05b47c603cd4",
        "files": [
            ("decodingtrust/LICENSE", "LICENSE", "187442db4df3afd21f2f0525739fd4beac28a62daaba3ee8d3533f60e7c33ec7", 20138),
            ("decodingtrust/stereotype/README.md", "data/stereotype/README.md", "c6ac02a8a9f8f0c0451b0b392e92844befc71ac5ff7c4a3fb405a5fbb8f01e63", 5076),
            ("decodingtrust/stereotype/stereotype_bias_data.jsonl", "data/stereotype/dataset/stereotype_bias_data.jsonl", "ac626f79ea78cc2328bb4f7d413c870d445e4288c37165549bbf07e480c69a81", 1825200),
            ("decodingtrust/stereotype/system_prompts.csv", "data/stereotype/dataset/system_prompts.csv", "2a81124f684dda18506312d6df958f1883cb5c0815c8f9db0c9b59bc8d9cad71", 724),
            ("decodingtrust/stereotype/user_prompts.csv", "data/stereotype/dataset/user_prompts.csv", "761687d74aecb0fb2bee946b415d68f31131bf314d16a8c0a00b670cc73f9c06", 494438),
            ("decodingtrust/toxicity/README.md", "data/toxicity/README.md", "360f31f19e1f4e53aa31831dfc29db4d49d191a18342a19033ac6aded4801204", 6621),
            ("decodingtrust/toxicity/nontoxic.jsonl", "data/toxicity/user_prompts/nontoxic.jsonl", "feb50408f49585752bb8cbbb10d1a340ec45783358251299ea9a82ab19606823", 872208),
            ("decodingtrust/toxicity/toxic.jsonl", "data/toxicity/user_prompts/toxic.jsonl", "a51d4650b14af9c0e795a9cfca2949916855662cee7c8db3dd551d38735d80cb", 860726),
        ],
    },
}


def datasets() -> list[str]:
    """Names of the datasets ``pull`` knows.

    >>> "crows_pairs" in datasets()
    True
    """
    return list(REGISTRY)


def file_url(dataset: str, repo_path: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """The raw URL of one file of ``dataset`` at its pinned commit.

    >>> file_url("bbq", "data/Age.jsonl")
    'https://raw.githubusercontent.com/nyu-mll/BBQ/bea11bd97d79217245b5871acd247b9d6eb24598/data/Age.jsonl'
    """
    entry = REGISTRY[dataset]
    return f"{base_url.rstrip('/')}/{entry['repo']}/{entry['commit']}/{repo_path}"


def pull(
    dest: str | os.PathLike | None = None,
    only: Iterable[str] | None = None,
    *,
    base_url: str = DEFAULT_BASE_URL,
    progress: bool = True,
    timeout: float = 60.0,
) -> pd.DataFrame:
    """Download the registered files into ``dest``, checking each one's sha256.

    Args:
        dest: the data directory (default: ``$WORKBENCH_DATA``, else the per-user data folder,
            the same folder the eval loaders read).
        only: dataset names to fetch (default: all of :func:`datasets`).
        base_url: where the ``{repo}/{commit}/{path}`` tree is served (raw GitHub by default;
            a mirror or a local server in tests).
        progress: show a progress bar over bytes.
        timeout: seconds before a stalled connection is abandoned.

    Returns:
        One row per file: dataset, path, url, bytes, status (``present`` already there with
        the right hash, ``downloaded``, or ``replaced`` a file whose hash was wrong).

    Raises:
        DataPullError: a download failed or its sha256 did not match. Files verified before
            it stay; the failed file leaves nothing behind.
        ValueError: an unknown dataset name.

    >>> pull("/data/benchmarks", only=["winogender"])               # doctest: +SKIP
    """
    names = list(only) if only else datasets()
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown dataset(s) {', '.join(unknown)}: choose from {', '.join(datasets())}")
    root = resolve_data_dir(dest)
    jobs = [(name, *spec) for name in names for spec in REGISTRY[name]["files"]]
    rows, todo = [], []
    for name, path, repo_path, sha, size in jobs:
        target = root / path
        url = file_url(name, repo_path, base_url)
        if target.is_file() and target.stat().st_size == size and sha256_file(target) == sha:
            rows.append({"dataset": name, "path": path, "url": url, "bytes": size, "status": "present"})
        else:
            todo.append((name, path, url, sha, size, target.exists()))
    from tqdm.auto import tqdm

    with tqdm(total=sum(t[4] for t in todo), unit="B", unit_scale=True, desc="data pull",
              disable=not progress or not todo) as bar:
        for name, path, url, sha, size, existed in todo:
            _download(url, root / path, sha, size, timeout, bar)
            rows.append({"dataset": name, "path": path, "url": url, "bytes": size,
                         "status": "replaced" if existed else "downloaded"})
    return pd.DataFrame(rows, columns=["dataset", "path", "url", "bytes", "status"])


def _download(url: str, target: Path, sha256: str, size: int, timeout: float, bar) -> None:
    # Streamed into a temporary file beside the target and hashed on the way; atomic_path
    # renames it into place only if the block below finishes, i.e. the sha256 matched, and
    # removes it otherwise.
    digest, got = hashlib.sha256(), 0
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        out.write(block)
                        digest.update(block)
                        got += len(block)
                        bar.update(len(block))
            except (urllib.error.URLError, OSError) as err:
                reason = getattr(err, "reason", err)
                raise DataPullError(f"{url}: download failed ({reason}); {target} left as it was") from None
        if digest.hexdigest() != sha256:
            raise DataPullError(
                f"{url}: sha256 mismatch for {target.name} (expected {sha256}, got {digest.hexdigest()}, "
                f"{got} of {size} bytes); the download was discarded and {target} left as it was"
            )
