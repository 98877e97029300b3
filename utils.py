"""The DLDR method's shared pieces, as the three scripts use them. Where each one lives:

1. Sampling (train_sgd.py)
   dldr/data.py          datasets (CIFAR, DIGITS, synthetic, image folders), --smalldatasets, --corrupt
   dldr/batches.py       batches: in memory on the device, or torchvision transforms in a DataLoader
   dldr/samples.py       the samples 0.pt, 1.pt, ... written and read back as parameter vectors
   dldr/sampling.py      when SGD samples: every epoch, every N steps, the authors' ImageNet rule
   dldr/records.py       run.json, noisy_labels.json and results_*.json
2. The DLDR basis
   dldr/basis.py         the exact principal directions of the samples (DLDR), the span of the raw
                         samples (TWA), in memory or streamed, and the random basis of the control
   dldr/trajectory.py    which samples a run uses, their mean (SWA, TWA's start), and the basis built
                         from them in one call, reused from a --basis-file
3. Training in the subspace (train_pbfgs.py, train_psgd.py, train_twa.py; swa.py beside them)
   dldr/optim.py         PBFGS (a torch.optim optimizer), project_gradients_ (P-SGD), FlatParameters
Around them:
   dldr/run.py           a run's life cycle (resume, lock, checkpoints, final evaluations)
   dldr/entry.py         run_main, the scripts' entry point: exit statuses, the resume command
   dldr/subspace.py      the run of the two subspace scripts, on top of it: checks, basis, restart
   dldr/evaluation.py    a run's evaluations: the authors', and with BatchNorm re-estimated
   dldr/cli.py           flags, argument types, the one-line error for bad input (exit status 2)
   dldr/networks.py      which network --arch names (models/ or torchvision), its dtype
   dldr/training.py      seeding, devices, precision, torch.compile
   dldr/progress.py      the log lines (the authors' formats), evaluation, end-of-run lists
   dldr/batchnorm.py     BatchNorm statistics re-estimated on the training data
   dldr/files.py         atomic writes, one writer per output (locks), weights-only loading
   dldr/checkpoints.py   exact resume, after an epoch or inside one
   dldr/distributed.py   torchrun: sums over processes, BatchNorm over the global batch
   models/               the architectures, one file per family, each registered under its --arch
"""
from dldr.basis import (random_basis, span_basis, streaming_span_basis,
                        streaming_subspace_basis, subspace_basis)
from dldr.batches import (MemoryLoader, batch_shape, bn_loader, crop_flip, make_loader,
                          test_batch_size)
from dldr.batchnorm import evaluate_reestimated, has_batchnorm, reestimate_bn
from dldr.checkpoints import (RunState, check_same_run, checkpoint_state, fast_forward,
                              find_resume_checkpoint, load_resume, load_strictly, load_weights,
                              resume_run)
from dldr.cli import (ArgumentParser, SubspaceOptions, UsageError, add_common_arguments,
                      add_data_arguments, add_sample_arguments, add_subspace_arguments, fraction,
                      int_list, milestones, momentum_factor, nonnegative_int, nonnegative_number,
                      output_tag, positive_int, positive_number, seed, share, train_start_point)
from dldr.data import (CIFAR100_MEAN, FOLDER_DATASETS, IMAGENET_MEAN, IMAGENET_STD, FolderSet,
                       ImageSet, check_dataset_name, folder_classes, load_data, load_digits,
                       load_folder, load_mnist, load_synthetic, noisy_labels)
from dldr.distributed import (all_reduce_sum_, distributed_model, drops_branches,
                              global_batch_share, init_distributed, is_main_process,
                              seed_processes, sync_batchnorm, unused_parameters, world)
from dldr.files import (Interrupted, OutputLock, WriteError, atomic_torch_save, atomic_write,
                        atomic_write_json, check_writable_dir, safe_load)
from dldr.networks import build_model, check_arch_name, new_model, pretrained_state
from dldr.optim import PBFGS, FlatParameters, project_gradients_, trainable_parameters
from dldr.records import (Results, check_noise_record, check_provenance, provenance,
                          save_noise_record)
from dldr.samples import (available_samples, check_sample_range, describe_epochs, load_sample_into,
                          load_sample_matrix, load_state, param_vector_from_state, sample_path,
                          save_model, save_sample)
from dldr.evaluation import Evaluator
from dldr.sampling import RULES as SAMPLE_RULES, SamplingPlan
from dldr.entry import resume_command, run_main
from dldr.run import SGD_OUTPUTS, Outputs, Run
from dldr.subspace import (SubspaceRun, check_samples_run, load_data_and_model, make_evaluator,
                           note_unchecked_noise, output_names, outputs_of)
from dldr.trajectory import Basis, Trajectory, build_basis, describe_sample_epochs
from dldr.progress import (EpochProgress, NonFiniteLoss, evaluate, format_eta, log,
                           log_sgd_lists, log_subspace_lists, log_test)
from dldr.training import (amp_mode, autocast, compile_model, full_precision, make_deterministic,
                           peak_memory_bytes, reset_peak_memory, resolve_device,
                           seed_everything, step_marker)
