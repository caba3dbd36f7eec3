"""The classical answer to few-shot segmentation: register the support slice onto the query slice
and carry its mask along.

Each support slice (of the query's episode) is registered in 2D to each query slice with
SimpleITK: an affine stage (Mattes mutual information or correlation, two resolutions, initialised
by aligning intensity centres of mass), then a cubic B-spline stage on top of it. The support mask
is warped with linear interpolation; K shots' warped masks are averaged and binarized at 0.5.

Across patients registration can fail outright: ITK raises (e.g. every sample maps outside the
moving image) or the result has lost the overlap (docs/DESIGN.md, "Baselines": a B-spline stage driven by Mattes MI
did so on a CHAOS slice pair). A failed B-spline falls back to the affine result, a failed affine
to the identity (which is `support_copy`), and `fallback_counts` counts each, so a report can say
how often the baseline was in fact something weaker. Cost: about 0.25 s per slice pair on one
core with the defaults (0.1 s for the affine stage alone; registration at quarter and half
resolution, few iterations, one ITK thread). The correlation metric is the default because it beat
Mattes MI on CHAOST2 EP1 pairs (bench/results/baselines_2026-11-26.md says which).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

__all__ = ["Registration", "RegistrationFailed"]


class RegistrationFailed(RuntimeError):
    """A stage finished but its result is unusable (overlap lost, metric undefined)."""


class Registration:
    """Affine + B-spline 2D registration of support slices to query slices.

    Parameters: `metric` "mattes" or "correlation"; `affine_iterations` and `bspline_iterations`
    per resolution level; `shrink` factors of the affine levels (the B-spline runs at the last
    two); `mesh` control-point grid of the B-spline; `sampling` fraction of pixels sampled by the
    metric (random with a fixed `seed`, so results are reproducible); `min_overlap` the fraction
    of the query slice that must still see the support slice after warping; `threads` ITK threads.
    """

    name = "registration"

    def __init__(self, metric: str = "correlation", affine_iterations: int = 30, bspline_iterations: int = 10,
                 shrink: tuple[int, ...] = (4, 2), mesh: int = 4, sampling: float = 0.25,
                 bins: int = 32, min_overlap: float = 0.5, use_bspline: bool = True,
                 threads: int = 1, seed: int = 0):
        if metric not in ("mattes", "correlation"):
            raise ValueError(f"metric must be 'mattes' or 'correlation', got {metric!r}")
        self.metric = metric
        self.affine_iterations = affine_iterations
        self.bspline_iterations = bspline_iterations
        self.shrink = tuple(shrink)
        self.mesh = mesh
        self.sampling = sampling
        self.bins = bins
        self.min_overlap = min_overlap
        self.use_bspline = use_bspline
        self.threads = threads
        self.seed = seed
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        self.fallback_counts = {"pairs": 0, "bspline_failed": 0, "affine_failed": 0, "itk_errors": 0}

    # -- the method interface -------------------------------------------------------------
    def predict_scores(self, support_images, support_masks, query_images, query_episode):
        sup = np.asarray(support_images, dtype=np.float32)
        masks = np.asarray(support_masks, dtype=np.float32)
        qry = np.asarray(query_images, dtype=np.float32)
        if sup.ndim != 4 or masks.shape != sup.shape:
            raise ValueError(f"support images/masks must both be (E, K, H, W): {sup.shape}, {masks.shape}")
        scores = np.zeros(qry.shape, dtype=np.float32)
        for q, e in enumerate(np.asarray(query_episode, dtype=np.int64)):
            for k in range(sup.shape[1]):
                scores[q] += self.warp_mask(sup[e, k], masks[e, k], qry[q]) / sup.shape[1]
        return scores

    def binarize(self, scores, support_masks=None) -> np.ndarray:  # the warped support mask, no component step
        return np.asarray(scores) > 0.5

    # -- registration -----------------------------------------------------------------------
    def warp_mask(self, moving: np.ndarray, mask: np.ndarray, fixed: np.ndarray) -> np.ndarray:
        """Register `moving` onto `fixed`, falling back as documented, and return the support
        `mask` resampled onto the fixed grid (float, linear)."""
        self.fallback_counts["pairs"] += 1
        fixed_img, moving_img = self._image(fixed), self._image(moving)
        mask_img = sitk.GetImageFromArray(np.asarray(mask, dtype=np.float32))
        try:
            affine = self._affine(fixed_img, moving_img)
            self._check(affine, fixed_img, moving_img, mask_img)
        except (RuntimeError, RegistrationFailed) as err:
            self._note(err)
            self.fallback_counts["affine_failed"] += 1
            return np.asarray(mask, dtype=np.float32).copy()
        transform = affine
        if self.use_bspline:
            try:
                transform = self._bspline(fixed_img, moving_img, affine)
                self._check(transform, fixed_img, moving_img, mask_img)
            except (RuntimeError, RegistrationFailed) as err:
                self._note(err)
                self.fallback_counts["bspline_failed"] += 1
                transform = affine
        return self._resample(mask_img, fixed_img, transform)

    def _note(self, err: Exception) -> None:
        if not isinstance(err, RegistrationFailed):
            self.fallback_counts["itk_errors"] += 1

    @staticmethod
    def _image(a: np.ndarray) -> sitk.Image:
        # shifted to [0, 2] so that the centre-of-mass initialiser weights the body, not the air
        return sitk.GetImageFromArray(np.asarray(a, dtype=np.float32) + 1.0)

    def _method(self) -> sitk.ImageRegistrationMethod:
        reg = sitk.ImageRegistrationMethod()
        if self.metric == "mattes":
            reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=self.bins)
        else:
            reg.SetMetricAsCorrelation()
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(self.sampling, self.seed)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetNumberOfThreads(self.threads)
        return reg

    def _affine(self, fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
        init = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(2),
                                                 sitk.CenteredTransformInitializerFilter.MOMENTS)
        reg = self._method()
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3,
                                                     numberOfIterations=self.affine_iterations,
                                                     gradientMagnitudeTolerance=1e-6)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel(list(self.shrink))
        reg.SetSmoothingSigmasPerLevel([s / 2.0 for s in self.shrink])
        reg.SetInitialTransform(init, inPlace=False)
        out = reg.Execute(fixed, moving)
        if not np.isfinite(reg.GetMetricValue()):
            raise RegistrationFailed("affine metric is not finite")
        return out

    def _bspline(self, fixed: sitk.Image, moving: sitk.Image, affine: sitk.Transform) -> sitk.Transform:
        bspline = sitk.BSplineTransformInitializer(fixed, [self.mesh, self.mesh], 3)
        reg = self._method()
        reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=self.bspline_iterations,
                                 maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=4 * self.bspline_iterations,
                                 costFunctionConvergenceFactor=1e7)
        levels = list(self.shrink[-2:]) if len(self.shrink) >= 2 else list(self.shrink)
        reg.SetShrinkFactorsPerLevel(levels)
        reg.SetSmoothingSigmasPerLevel([s / 2.0 for s in levels])
        reg.SetMovingInitialTransform(affine)
        reg.SetInitialTransform(bspline, inPlace=True)
        reg.Execute(fixed, moving)
        if not np.isfinite(reg.GetMetricValue()):
            raise RegistrationFailed("B-spline metric is not finite")
        # the optimised B-spline acts first, then the affine (ITK composes last-added first)
        return sitk.CompositeTransform([affine, bspline])

    @staticmethod
    def _resample(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform) -> np.ndarray:
        out = sitk.Resample(image, reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        return sitk.GetArrayFromImage(out)

    def _check(self, transform, fixed, moving, mask) -> None:
        """Reject a result that lost the overlap: too little of the query slice still sees the
        support slice, or a non-empty support mask warped to nothing."""
        ones = sitk.GetImageFromArray(np.ones(sitk.GetArrayViewFromImage(moving).shape, np.float32))
        seen = float(self._resample(ones, fixed, transform).mean())
        if not np.isfinite(seen) or seen < self.min_overlap:
            raise RegistrationFailed(f"only {seen:.0%} of the query slice overlaps the warped support")
        if sitk.GetArrayViewFromImage(mask).any() and not (self._resample(mask, fixed, transform) > 0.5).any():
            raise RegistrationFailed("the support mask warped to nothing")
