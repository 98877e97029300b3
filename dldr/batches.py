"""Batches: the in-memory path (a whole split on the device, shuffled, augmented and normalised
there) and the DataLoader path (torchvision transforms in worker processes, the authors' way)."""
import os

import torch
import torch.nn.functional as F

from .data import FOLDER_DATASETS, FolderSet
from .distributed import world


def crop_flip(padded, top, left, flip, size=32):
    """Crop ``size`` x ``size`` windows at (top, left) from padded images and mirror where ``flip``.

    The same result as torchvision's RandomCrop(size, padding) followed by RandomHorizontalFlip
    for the same offsets and coin flips, done for a whole batch with one gather.
    """
    n, c = padded.shape[:2]
    ar = torch.arange(size, device=padded.device)
    rows = (top[:, None] + ar)[:, None, :, None]                       # (n,1,size,1)
    cols = left[:, None] + ar                                          # (n,size)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(n, device=padded.device)[:, None, None, None]
    chan = torch.arange(c, device=padded.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


class MemoryLoader:
    """Batches from a split held on the device: shuffled, augmented and normalised there.

    All random draws of an epoch come from ``self.generator`` (a CPU generator, so the same seed
    gives the same batches on any device), all made as the epoch starts: a checkpoint keeps the
    generator's state, and one inside an epoch its state at the epoch's start
    (``epoch_start``) with the batches done, which the resumed run passes over (``skip``).
    """

    def __init__(self, data, batch_size, device, shuffle, seed=0, padding=4, split_batches=None):
        self.data = data
        self.batch_size = batch_size
        # Under torchrun every process draws the same permutation and augmentation, then takes
        # its part of each global batch (training, and BatchNorm re-estimation: split_batches) or
        # its shard of the split (evaluation).
        self.rank, self.world_size = world()
        self.device = device
        self.shuffle = shuffle
        self.split_batches = shuffle if split_batches is None else split_batches
        self.augment = data.augment and shuffle
        self.padding = padding
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch_start = None  # (the generator's state, None) as the epoch under way began
        self.skip = 0  # batches of the next epoch to pass over (a run resumed inside it)
        images = data.images.to(device)
        if self.augment:
            images = F.pad(images, (padding,) * 4)  # zero padding, as RandomCrop(padding=4)
        self.images = images
        self.labels = data.labels.to(device)
        self.mean = torch.tensor(data.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, 3, 1, 1)
        self.spans = self._batches()

    def _batches(self):
        """(start, end) of the batches this process iterates over, in positions of ``order``."""
        n, b, w = len(self.data), self.batch_size, self.world_size
        if not self.split_batches and w > 1:
            shard = torch.tensor_split(torch.arange(n), w)[self.rank]
            lo, hi = (int(shard[0]), int(shard[-1]) + 1) if len(shard) else (0, 0)
            return [(s, min(s + b, hi)) for s in range(lo, hi, b)]
        # A final global batch smaller than the number of processes is dropped everywhere.
        return [(s, min(s + b, n)) for s in range(0, n, b) if min(s + b, n) - s >= w]

    def __len__(self):
        return len(self.spans)

    def global_batch_size(self, i):
        """Images in global batch ``i`` (all processes' parts of it together)."""
        start, end = self.spans[i]
        return end - start

    def __iter__(self):
        n = len(self.data)
        self.epoch_start, (skip, self.skip) = (self.generator.get_state(), None), (self.skip, 0)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator)
        else:
            order = torch.arange(n)
        if self.augment:
            span = 2 * self.padding + 1
            offsets = torch.randint(span, (n, 2), generator=self.generator)
            flips = torch.rand(n, generator=self.generator) < 0.5
            offsets, flips = offsets.to(self.device), flips.to(self.device)
        order = order.to(self.device)
        size = self.data.images.shape[-1]
        for start, end in self.spans[skip:]:
            if self.split_batches and self.world_size > 1:  # this process's part of the batch
                part = torch.tensor_split(torch.arange(start, end), self.world_size)[self.rank]
                start, end = int(part[0]), int(part[-1]) + 1
            idx = order[start:end]
            if self.augment:
                sel = torch.arange(start, end, device=self.device)
                x = crop_flip(self.images[idx], offsets[sel, 0], offsets[sel, 1], flips[sel], size)
            else:
                x = self.images[idx]
            # torchvision's ToTensor then Normalize, operation for operation: the same inputs
            x = x.float().div(255).sub(self.mean).div(self.std)
            yield x, self.labels[idx]


def image_seed(seed, epoch, index):
    """The seed of one training image's random crop and flip in one epoch: a mix (splitmix64's)
    of the run's seed, the epoch and the image's index, so that an image is augmented alike
    whichever worker process reads it, in whichever position, and in a run resumed mid-epoch."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index) & (2 ** 64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2 ** 64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2 ** 64 - 1)
    return (x ^ (x >> 31)) & (2 ** 63 - 1)


class _View(torch.utils.data.Dataset):
    """A split seen through torchvision transforms. With ``random`` (training's crops and flips)
    each image's draws come from ``image_seed`` (the run's seed, ``self.epoch``, its index), not
    from the worker's generator, whose state depends on which batches that worker read before:
    this is what makes the DataLoader path resumable inside an epoch, bit for bit."""

    def __init__(self, data, transform, random=False, seed=0):
        self.data, self.transform, self.random, self.seed = data, transform, random, seed
        self.epoch = 0  # set by _DeviceLoader before each epoch's workers start

    def __len__(self):
        return len(self.data)

    def image(self, i):
        return self.data.images[i]

    def __getitem__(self, i):
        image = self.image(i)
        if not self.random:
            return self.transform(image), self.data.labels[i]
        with torch.random.fork_rng(devices=[]):  # the process's own stream is left as it was
            torch.default_generator.manual_seed(image_seed(self.seed, self.epoch, int(i)))
            return self.transform(image), self.data.labels[i]


class _FolderView(_View):
    def __init__(self, data, transform, random=False, seed=0):
        super().__init__(data, transform, random, seed)
        from torchvision.datasets.folder import default_loader  # PIL, converted to RGB
        self.load = default_loader

    def image(self, i):
        return self.load(os.fsdecode(self.data.paths[i]))


class _SkippingBatches(torch.utils.data.Sampler):
    """A batch sampler's batches, the first ``skip`` of an epoch passed over without reading their
    images (a run resumed mid-epoch): the shuffle's draws are made all the same."""

    def __init__(self, batches):
        self.batches, self.skip = batches, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        batches, (skip, self.skip) = iter(self.batches), (self.skip, 0)
        for _ in range(skip):
            next(batches, None)
        yield from batches


class _DeviceLoader:
    """A DataLoader's batches moved to the device. ``generator`` (the shuffle's) and ``epoch``
    (a DistributedSampler's, and the images' augmentation seeds) are what a checkpoint needs to
    continue the same order; inside an epoch, their values as it began (``epoch_start``) and the
    batches done, which the resumed run passes over (``skip``)."""

    def __init__(self, loader, device, generator, sampler=None):
        self.loader, self.device = loader, device
        self.generator, self.sampler = generator, sampler
        self.epoch = 0
        self.epoch_start = None

    @property
    def skip(self):
        return self.loader.batch_sampler.skip

    @skip.setter
    def skip(self, batches):
        self.loader.batch_sampler.skip = batches

    def __len__(self):
        return len(self.loader)

    def global_batch_size(self, i):
        """Images in global batch ``i``: a DistributedSampler gives every process as many (it
        pads the split), so this process's batch times the number of processes."""
        per_process = len(self.sampler) if self.sampler is not None else len(self.loader.dataset)
        size = self.loader.batch_sampler.batches.batch_size  # (the loader's own is None)
        return min(size, per_process - i * size) * world()[1]

    def __iter__(self):
        self.epoch_start = (self.generator.get_state(), self.epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)
        dataset = self.loader.dataset
        view = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
        view.epoch = self.epoch  # (workers start with the iterator below: they see it)
        self.epoch += 1
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def _dataloader(view, batch_size, device, shuffle, workers, seed, split_batches=None):
    """A DataLoader over ``view`` whose batches land on the device.

    Under torchrun each process reads its part: for training a DistributedSampler (shuffled from
    the seed and the epoch, batch_size // processes images per process, so --batch-size stays
    the global batch), for evaluation a contiguous shard of the split. The samplers are the
    DataLoader's own (RandomSampler from ``generator``, BatchSampler), built here to pass over
    batches (_SkippingBatches); the same draws as DataLoader(shuffle=...) makes.
    """
    rank, size = world()
    generator = torch.Generator().manual_seed(seed)
    sampler = distributed = None
    if size > 1 and (shuffle if split_batches is None else split_batches):
        sampler = distributed = torch.utils.data.DistributedSampler(view, size, rank,
                                                                    shuffle=shuffle, seed=seed)
        batch_size = max(1, batch_size // size)
    elif size > 1:
        view = torch.utils.data.Subset(
            view, torch.tensor_split(torch.arange(len(view)), size)[rank].tolist())
    if sampler is None:
        sampler = (torch.utils.data.RandomSampler(view, generator=generator) if shuffle else
                   torch.utils.data.SequentialSampler(view))
    batches = _SkippingBatches(torch.utils.data.BatchSampler(sampler, batch_size, False))
    loader = torch.utils.data.DataLoader(view, batch_sampler=batches, num_workers=workers,
                                         generator=generator, pin_memory=device.type == "cuda")
    return _DeviceLoader(loader, device, generator, distributed)


def batch_shape(data, n=2):
    """The shape of a batch of ``n`` training inputs of ``data``, as the model sees them."""
    if isinstance(data, FolderSet):
        return (n, 3, 224, 224)
    return (n, *data.images.shape[1:])


def test_batch_size(datasets, batch_size):
    """The authors' evaluation batches: 100 images for MNIST, the training batch for ImageNet and
    folder, 128 otherwise."""
    if datasets == "MNIST":
        return 100
    return batch_size if datasets in FOLDER_DATASETS else 128


def make_loader(data, batch_size, device, shuffle, kind="memory", workers=4, seed=0,
                split_batches=None):
    """The batch source of a split: a MemoryLoader (``kind`` "memory"), or torchvision transforms in
    a DataLoader ("dataloader"; always for image folders, which are decoded from disk per batch).
    Training splits (``shuffle``) of augmented datasets get random crops and flips. Under torchrun
    each global batch is split over the processes when shuffled or ``split_batches``, else each
    process takes a shard of the split."""
    if kind == "memory" and not isinstance(data, FolderSet):
        return MemoryLoader(data, batch_size, device, shuffle, seed, split_batches=split_batches)
    import torchvision.transforms as T  # here: the in-memory path does without torchvision
    if isinstance(data, FolderSet):
        if data.augment and shuffle:
            steps = [T.RandomResizedCrop(224), T.RandomHorizontalFlip()]
        else:
            steps = [T.Resize(256), T.CenterCrop(224)]
        transform = T.Compose(steps + [T.ToTensor(), T.Normalize(data.mean, data.std)])
        view = _FolderView(data, transform, random=data.augment and shuffle, seed=seed)
        return _dataloader(view, batch_size, device, shuffle, workers, seed, split_batches)
    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if data.augment and shuffle else []
    transform = T.Compose(steps + [T.ConvertImageDtype(torch.float32), T.Normalize(data.mean, data.std)])
    view = _View(data, transform, random=data.augment and shuffle, seed=seed)
    return _dataloader(view, batch_size, device, shuffle, workers, seed, split_batches)


def bn_loader(data, batch_size, device, kind="memory", workers=4):
    """The training images in order, without augmentation (as the test images are seen), for
    re-estimating BatchNorm statistics; under torchrun each batch split over the processes."""
    return make_loader(data, batch_size, device, shuffle=False, kind=kind, workers=workers,
                       split_batches=True)
