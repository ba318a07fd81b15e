"""Molecule graphs and BRICS fragments per medication (the inputs of SafeDrug-style encoders).

Each medication (an ATC level-3 class) has zero or more SMILES. Every valid SMILES becomes one
``torch_geometric`` graph (atom and bond features of :func:`torch_geometric.utils.from_smiles`);
``average_projection`` averages a medication's molecule embeddings, as SafeDrug does. The BRICS
fragment vocabulary is sorted, so the fragment order (and the mask's columns) is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem import BRICS


@dataclass
class MoleculeSet:
    graphs: list  # torch_geometric.data.Data, one per valid SMILES
    molecule_medication: np.ndarray  # [n_molecules] medication index of each graph
    average_projection: np.ndarray  # [M, n_molecules] float32, row i averages medication i's graphs
    fragments: list[str]  # sorted BRICS fragment SMILES
    fragment_mask: np.ndarray  # [M, n_fragments] uint8, 1 where the medication has the fragment
    invalid_smiles: list[tuple[int, str]]  # (medication index, SMILES) that RDKit could not parse

    @property
    def medications_with_molecules(self) -> np.ndarray:
        return self.average_projection.sum(axis=1) > 0


def brics_fragments(mol: Chem.Mol) -> set[str]:
    """BRICS fragments of one molecule; a molecule without BRICS bonds is its own single fragment."""
    fragments = set(BRICS.BRICSDecompose(mol))
    return fragments or {Chem.MolToSmiles(mol)}


def build_molecule_set(smiles_per_medication: list[list[str]]) -> MoleculeSet:
    from torch_geometric.utils import from_smiles

    RDLogger.DisableLog("rdApp.*")
    n_meds = len(smiles_per_medication)
    graphs, owners, invalid = [], [], []
    med_fragments: list[set[str]] = [set() for _ in range(n_meds)]
    for med, smiles_list in enumerate(smiles_per_medication):
        for smiles in smiles_list:
            mol = Chem.MolFromSmiles(smiles)
            if mol is None or mol.GetNumAtoms() == 0:
                invalid.append((med, smiles))
                continue
            graph = from_smiles(smiles)
            if graph.num_nodes == 0:
                invalid.append((med, smiles))
                continue
            graphs.append(graph)
            owners.append(med)
            med_fragments[med] |= brics_fragments(mol)
    owners_arr = np.asarray(owners, dtype=np.int64)
    projection = np.zeros((n_meds, len(graphs)), dtype=np.float32)
    projection[owners_arr, np.arange(len(graphs))] = 1.0
    counts = projection.sum(axis=1, keepdims=True)
    projection = np.divide(projection, counts, out=np.zeros_like(projection), where=counts > 0)
    fragments = sorted(set().union(*med_fragments)) if med_fragments else []
    column = {f: j for j, f in enumerate(fragments)}
    mask = np.zeros((n_meds, len(fragments)), dtype=np.uint8)
    for med, frags in enumerate(med_fragments):
        mask[med, [column[f] for f in frags]] = 1
    return MoleculeSet(graphs, owners_arr, projection, fragments, mask, invalid)
